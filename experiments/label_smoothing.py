"""Label smoothing 0 vs 0.1 on the same GoogLeNet and budget.

Claim (Szegedy et al. 2015, "Rethinking the Inception Architecture", section 7): label-smoothing
regularisation with epsilon 0.1 improves ImageNet top-1 and top-5 error by about 0.2% absolute
(Table 3, Inception-v2 row "+ Label Smoothing"). A 0.2-point effect is far below what a few seeds on
297 test images can resolve; the study says whether anything larger shows at this scale.

  inception-sweep experiments/label_smoothing.py --workdir runs/label_smoothing --parallel 2
  inception-report runs/label_smoothing --out experiments/results/label_smoothing
"""

from regimes import DIGITS_32

BASE_CONFIG = "configs/digits.py"
OVERRIDES = DIGITS_32
SEEDS = (0, 1, 2, 3, 4)


def sweep():
    for smoothing in (0.0, 0.1):
        for seed in SEEDS:
            yield {"label_smoothing": smoothing, "seed": seed}
