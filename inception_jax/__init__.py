"""inception_jax: the Inception family of CNNs in JAX/Flax, with training recipes from the papers."""

from inception_jax import models
from inception_jax.models import DataConfig, create_model, data_config, list_models, model_options
from inception_jax import convert  # noqa: E402  (imports models only; torch is imported lazily)

__version__ = "0.1.0"
__all__ = ["DataConfig", "convert", "create_model", "data_config", "list_models", "model_options", "models"]
