"""Every registered variant on the same budget: GoogLeNet, BN-Inception, Inception-v2/v3/v4,
Inception-ResNet-v1/v2.

Each at a quarter of its width, one block per stage where the variant has the `depths` option
(v4 and Inception-ResNet), 75 px (the v2/v3/v4/IR minimum, used for all), the same data, steps,
optimizer and schedule. On ImageNet each paper's network beats its predecessors (GoogLeNet ->
BN-Inception -> v2 -> v3 -> v4 and Inception-ResNet-v2); here every network is narrowed and shallowed
alike and the data is tiny, so the study measures how each trains on a small budget, not its
ImageNet rank.
The report's top-1 vs GMACs plot puts each variant's accuracy against its cost.

  inception-sweep experiments/variants.py --workdir runs/variants --parallel 2
  inception-report runs/variants --out experiments/results/variants
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
