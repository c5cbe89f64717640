"""Aux classifiers: none vs GoogLeNet's two weighted 0.3; Inception-v3's head with and without BN-auxiliary.

GoogLeNet (section 5) adds the heads to push gradient into the lower layers; Rethinking (section 4) finds
they regularise instead, best with a batch-normalised fully connected layer (REFERENCES.md §4.6, §5). Our
v3 head takes `configs/inception_v3.py`'s weight 0.4. Inference never runs the heads, so GMACs are equal
within each model, while parameters include the heads.

  inception-sweep experiments/aux_heads.py --workdir runs/aux_heads --parallel 2
"""

from regimes import DIGITS_32, with_seeds

BASE_CONFIG = "configs/digits.py"
OVERRIDES = DIGITS_32
COMPARE_WITHIN = ("model.name",)

SETTINGS = [
    {"model.name": "googlenet", "model.aux_logits": False},
    {"model.name": "googlenet", "model.aux_logits": True, "aux_loss_weights": (0.3, 0.3)},
    {"model.name": "inception_v3", "input.image_size": 75, "model.aux_logits": False},
    {
        "model.name": "inception_v3",
        "input.image_size": 75,
        "model.aux_logits": True,
        "aux_loss_weights": (0.4,),
        "model.bn_aux": True,
    },
    {
        "model.name": "inception_v3",
        "input.image_size": 75,
        "model.aux_logits": True,
        "aux_loss_weights": (0.4,),
        "model.bn_aux": False,
    },
]


def sweep():
    return with_seeds(SETTINGS)
