"""Weight import: PyTorch (timm / torchvision) checkpoints -> Flax variables, and saving them safely."""

from inception_jax.convert.torch_weights import (
    WeightMismatchError,
    from_torch,
    load_torch_state_dict,
    torch_key_to_flax_path,
)
from inception_jax.convert.files import load_variables, save_variables

__all__ = [
    "WeightMismatchError",
    "from_torch",
    "load_torch_state_dict",
    "load_variables",
    "save_variables",
    "torch_key_to_flax_path",
]
