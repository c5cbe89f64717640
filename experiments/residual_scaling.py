"""Residual scaling in Inception-ResNet-v2 where its blocks exceed 1000 filters: scales 1.0, 0.3, 0.2, 0.1.

The v4 paper (section 3.3) saw residual variants with over 1000 filters "die" early in training, and
scaling the residuals by 0.1-0.3 prevented it (REFERENCES.md §2.4). At width 1.0 our 17x17 and 8x8 blocks
carry 1088 and 2080 filters, as there; one block per stage at 75 px keeps it affordable. The paper's
collapse came after tens of thousands of iterations of 40+ blocks, so a null result does not refute it.

  inception-sweep experiments/residual_scaling.py --workdir runs/residual_scaling --parallel 2
"""

from regimes import DIGITS_75, SEEDS

BASE_CONFIG = "configs/digits.py"
OVERRIDES = {
    **DIGITS_75,
    "model.name": "inception_resnet_v2",
    "model.width_multiplier": 1.0,
    "model.depths": (1, 1, 1),
}


def sweep():
    for scale in (1.0, 0.3, 0.2, 0.1):
        for seed in SEEDS:
            yield {"model.residual_scales": (scale, scale, scale), "seed": seed}
