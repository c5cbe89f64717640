"""Residual scaling in Inception-ResNet-v2 where its blocks exceed 1000 filters: scales 1.0, 0.3, 0.2, 0.1.

Claim (Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the Impact of Residual Connections",
section 3.3): "if the number of filters exceeded 1000, the residual variants started to exhibit
instabilities and the network has just 'died' early in the training"; scaling the residuals by 0.1 to
0.3 before adding them stabilised training. At width 1.0 our IR-v2's 17x17 blocks carry 1088 filters
and its 8x8 blocks 2080, as in the paper; one block per stage and 75 px keep it affordable here. The
paper saw the collapse after tens of thousands of iterations of a 40+-block network, so a few hundred
steps of three blocks can show instability only if it comes early; a null result does not refute it.

  inception-sweep experiments/residual_scaling.py --workdir runs/residual_scaling --parallel 2
  inception-report runs/residual_scaling --out experiments/results/residual_scaling
"""

from regimes import DIGITS_75, SEEDS

BASE_CONFIG = "configs/digits.py"
OVERRIDES = {
    **DIGITS_75,
    "model.name": "inception_resnet_v2",
    "model.width_multiplier": 1.0,
    "model.depths": (1, 1, 1),
    "total_steps": 200,
}


def sweep():
    for scale in (1.0, 0.3, 0.2, 0.1):
        for seed in SEEDS:
            yield {"model.residual_scales": (scale, scale, scale), "seed": seed}
