"""Auxiliary classifiers: none vs GoogLeNet's two heads weighted 0.3; Inception-v3's head with and
without BatchNorm on its fully connected layer.

Claims: GoogLeNet (Szegedy et al. 2014, section 5) adds two side classifiers, their losses weighted
0.3, to push gradient into the lower layers and regularise. Rethinking the Inception Architecture
(Szegedy et al. 2015, section 4) finds they do not speed up early training and act as regularisers
instead: Inception-v3's single head helps most when its fully connected layer is batch-normalised
(Table 3 row "+ BN-auxiliary", 21.6% -> 21.2% top-1 error; Fig. 8: "0.4% absolute gain"). Our v3
head takes the 0.4 weight of `configs/inception_v3.py`. Inference never runs the heads, so GMACs are
equal within each model; parameters include the heads. Comparisons are made within each model.

  inception-sweep experiments/aux_heads.py --workdir runs/aux_heads --parallel 2
  inception-report runs/aux_heads --out experiments/results/aux_heads
"""

from regimes import DIGITS_32, with_seeds

BASE_CONFIG = "configs/digits.py"
OVERRIDES = DIGITS_32
COMPARE_WITHIN = ("model.name",)

SETTINGS = [
    {"model.name": "googlenet", "model.aux_logits": False},
    {"model.name": "googlenet", "model.aux_logits": True, "aux_loss_weights": (0.3, 0.3)},
    {"model.name": "inception_v3", "input.image_size": 75, "total_steps": 300, "model.aux_logits": False},
    {
        "model.name": "inception_v3",
        "input.image_size": 75,
        "total_steps": 300,
        "model.aux_logits": True,
        "aux_loss_weights": (0.4,),
        "model.bn_aux": True,
    },
    {
        "model.name": "inception_v3",
        "input.image_size": 75,
        "total_steps": 300,
        "model.aux_logits": True,
        "aux_loss_weights": (0.4,),
        "model.bn_aux": False,
    },
]


def sweep():
    return with_seeds(SETTINGS)
