"""The Inception family as pure-functional `flax.linen` modules, one file per family.

Importing this package registers every variant; it pulls in no TF, data or optimiser code.
"""

from inception_jax.models import bn_inception, googlenet, inception_resnet, inception_v3, inception_v4, layers, registry  # noqa: F401  (registration)
from inception_jax.models.registry import DataConfig, create_model, data_config, list_models, model_options

__all__ = ["DataConfig", "create_model", "data_config", "list_models", "model_options", "layers", "registry"]
