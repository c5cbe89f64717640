"""Factorised convolutions: a 5x5 vs two 3x3 (BN-Inception, Inception-v3's Mixed_5b-5d), and an
n x n vs a 1 x n followed by an n x 1 (Inception-v3's Mixed_6b-6e).

Claims (Szegedy et al. 2015, "Rethinking the Inception Architecture"): section 3.1, a 5x5
convolution costs 25/9 = 2.78x a 3x3 one and two stacked 3x3 convolutions replace it for 28% less
with no loss of expressiveness; section 3.2, a 1 x n then n x 1 pair replaces an n x n convolution
(33% cheaper for n = 3) and works well on 12-20 px grids. `experiments/results/costs.md` counts the
costs on our modules; this study trains each pair on the same budget and compares accuracy.

What 75 px can show: the 8x8 digits upsampled to 75 px give Mixed_5b-5d 7x7 maps and Mixed_6b-6e
3x3 maps, so a 7x7 convolution and a 1x7 + 7x1 pair both see the whole 3x3 map; this tests capacity
and optimisation, not the receptive-field argument. Comparisons are made within each model.

  inception-sweep experiments/factorization.py --workdir runs/factorization --parallel 2
  inception-report runs/factorization --out experiments/results/factorization
"""

from regimes import DIGITS_75, with_seeds

BASE_CONFIG = "configs/digits.py"
OVERRIDES = DIGITS_75
COMPARE_WITHIN = ("model.name",)

SETTINGS = [
    {"model.name": "bn_inception", "model.factorize_5x5": True},  # two 3x3 (BN-Inception as published)
    {"model.name": "bn_inception", "model.factorize_5x5": False},  # one 5x5
    {"model.name": "inception_v3", "model.inception_a_5x5": "5x5", "model.factorize_nxn": True},  # v3 as released
    {"model.name": "inception_v3", "model.inception_a_5x5": "3x3x2", "model.factorize_nxn": True},
    {"model.name": "inception_v3", "model.inception_a_5x5": "5x5", "model.factorize_nxn": False},
]


def sweep():
    return with_seeds(SETTINGS)
