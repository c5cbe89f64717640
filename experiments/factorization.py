"""Factorised convolutions: a 5x5 vs two 3x3 (BN-Inception, v3's Mixed_5b-5d); 7x7 vs 1x7 + 7x1 (v3's Mixed_6b-6e).

Rethinking sections 3.1 and 3.2 argue both factorisations save cost at no loss of expressiveness
(REFERENCES.md §4.2, §4.3); this trains each pair on one budget, compared within each model. At 75 px
Mixed_6b-6e see 3x3 maps, which a 7x7 and a 1x7 + 7x1 pair both cover whole: the study tests capacity and
optimisation, not the receptive-field argument.

  inception-sweep experiments/factorization.py --workdir runs/factorization --parallel 2
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
