"""Label smoothing 0 vs 0.1 on the same GoogLeNet and budget.

Claim (Rethinking, section 7 and Table 3): epsilon 0.1 improves ImageNet top-1 and top-5 by about
0.2% absolute, far below what a few seeds on 297 test images resolve; the study says whether anything
larger shows at this scale.

  inception-sweep experiments/label_smoothing.py --workdir runs/label_smoothing --parallel 2
  inception-report runs/label_smoothing --out experiments/results/label_smoothing
"""

from regimes import DIGITS_32, SEEDS

BASE_CONFIG = "configs/digits.py"
OVERRIDES = DIGITS_32


def sweep():
    for smoothing in (0.0, 0.1):
        for seed in SEEDS:
            yield {"label_smoothing": smoothing, "seed": seed}
