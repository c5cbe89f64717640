"""inception_jax: the Inception family of CNNs in JAX/Flax, with the papers' training recipes.

The library (this package's top level: `models`, `kernels`, `losses`, `optim`, `weights`) imports no
TensorFlow, data pipeline or PyTorch; the trainer is `inception_jax.trainer`, the command-line tools
`inception_jax.tools`.
"""

from inception_jax import models
from inception_jax.models import DataConfig, create_model, data_config, list_models, model_options
from inception_jax.weights import load_variables, read_model_spec, save_variables

__version__ = "0.1.0"
__all__ = [
    "DataConfig",
    "create_model",
    "data_config",
    "list_models",
    "load_variables",
    "model_options",
    "models",
    "read_model_spec",
    "save_variables",
]
