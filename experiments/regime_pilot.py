"""Pilot: which scale can separate settings? The baseline GoogLeNet alone, at several data sizes and budgets.

The first studies memorised their 150 images (train loss at the label-smoothing floor, top-5 at
98-100%). A scale is chosen from this pilot before any comparison is made, on the baseline alone:
top-1 well below the ceiling (60-85%), final train loss above the floor, seed-to-seed spread of top-1
at most about 2 points. `regimes.py` records the choice and its reason.

  inception-sweep experiments/regime_pilot.py --workdir runs/regime_pilot --parallel 2
  inception-report runs/regime_pilot --out experiments/results/regime_pilot
"""

from regimes import DIGITS_32

BASE_CONFIG = "configs/digits.py"
OVERRIDES = DIGITS_32
SEEDS = (0, 1, 2)
# (training split, steps of batch 32). First round: 150 images for 21 or 53 epochs (the old studies:
# 107), 450 images for 11, all 1500 for 2 or 5; all but the first at 89-97% top-1. Second round, below.
SCALES = (
    ("train[:10%]", 100),
    ("train[:10%]", 250),
    ("train[:30%]", 150),
    ("train", 100),
    ("train", 250),
    ("train[:5%]", 100),
    ("train[:5%]", 200),
    ("train[:10%]", 50),
    ("train[:20%]", 60),
)


# Third round, for the studies at 75 px: their baseline GoogLeNet and the Inception-v3 most of them vary,
# on the 32 px choice's 150 images.
SCALES_75 = (
    {"model.name": "googlenet", "total_steps": 100},
    {"model.name": "googlenet", "total_steps": 200},
    {"model.name": "inception_v3", "total_steps": 100},
)


def sweep():
    for split, steps in SCALES:
        for seed in SEEDS:
            yield {"dataset.train_split": split, "total_steps": steps, "seed": seed}
    for setting in SCALES_75:
        for seed in SEEDS:
            yield {**setting, "input.image_size": 75, "seed": seed}
