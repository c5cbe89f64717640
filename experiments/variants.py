"""The seven networks of the papers on the same budget: GoogLeNet, BN-Inception, Inception-v2/v3/v4,
Inception-ResNet-v1/v2, each compared with GoogLeNet (the baseline).

Each at a quarter width, one block per stage where the variant has `depths` (v4, Inception-ResNet), 75 px,
the same data, steps, optimizer and schedule: how each trains on a small budget, not its ImageNet rank.

  inception-sweep experiments/variants.py --workdir runs/variants --parallel 2
"""

from regimes import DIGITS_75, with_seeds

from inception_jax.models import registry

BASE_CONFIG = "configs/digits.py"
OVERRIDES = DIGITS_75
# Pinned: a new registry entry (the FID network has no `family` tag) cannot drift into the study.
MODELS = (
    "googlenet",
    "bn_inception",
    "inception_v2",
    "inception_v3",
    "inception_v4",
    "inception_resnet_v1",
    "inception_resnet_v2",
)
BASELINE = {"model.name": "googlenet"}
# The papers' single-crop ImageNet top-1 accuracy, 100 - the top-1 error (REFERENCES.md §1.1): GoogLeNet
# and Inception-v2/v3 from Rethinking Table 3, BN-Inception from the BN paper section 4.2, v4 and both
# Inception-ResNets from the v4 paper's single-crop table. The report ranks the study against them.
RANK_AGAINST = {
    "key": "model.name",
    "values": {
        "googlenet": 71.0,
        "bn_inception": 74.8,
        "inception_v2": 76.6,
        "inception_v3": 78.8,
        "inception_v4": 80.0,
        "inception_resnet_v1": 78.7,
        "inception_resnet_v2": 80.1,
    },
    "source": "the papers' ImageNet single-crop top-1",
}


def sweep():
    settings = [{"model.name": name} for name in MODELS]
    for setting in settings:
        if "depths" in registry.model_options(setting["model.name"]):
            setting["model.depths"] = (1, 1, 1)  # one block per stage (v4, Inception-ResNet)
    return with_seeds(settings)
