"""Every registered variant on the same budget: GoogLeNet, BN-Inception, Inception-v2/v3/v4,
Inception-ResNet-v1/v2.

Each at a quarter width, one block per stage where the variant has `depths` (v4, Inception-ResNet), 75 px,
the same data, steps, optimizer and schedule. Narrowed alike and on tiny data, the study shows how each
trains on a small budget, not its ImageNet rank; the report plots top-1 against GMACs.

  inception-sweep experiments/variants.py --workdir runs/variants --parallel 2
"""

from regimes import DIGITS_75, with_seeds

from inception_jax.models import registry

BASE_CONFIG = "configs/digits.py"
OVERRIDES = DIGITS_75


def sweep():
    settings = [{"model.name": name} for name in registry.list_models()]
    for setting in settings:
        if "depths" in registry.model_options(setting["model.name"]):
            setting["model.depths"] = (1, 1, 1)  # one block per stage (v4, Inception-ResNet)
    return with_seeds(settings)
