"""Weight import: PyTorch (timm / torchvision) checkpoints and Keras application files -> Flax variables,
and saving them safely."""

from inception_jax.tools.convert.keras_weights import from_keras, keras_model_options
from inception_jax.tools.convert.torch_weights import (
    WeightMismatchError,
    from_torch,
    load_torch_state_dict,
    torch_key_to_flax_path,
)
from inception_jax.weights import load_variables, read_class_names, read_preprocessing, save_variables

__all__ = [
    "WeightMismatchError",
    "from_keras",
    "from_torch",
    "keras_model_options",
    "load_torch_state_dict",
    "load_variables",
    "read_class_names",
    "read_preprocessing",
    "save_variables",
    "torch_key_to_flax_path",
]
