"""Does GoogLeNet need the 1x1 reductions? The naive Inception module vs the dimension-reduced one.

Without 1x1 convolutions before the 3x3 and 5x5 and after the pool, the width grows from stage to stage
and the cost "blows up" (GoogLeNet paper section 4, Figure 2; REFERENCES.md §4.1), as
`experiments/results/costs.md` counts on our modules. This trains both forms (`model.naive`) on one
budget and asks what the reductions cost in accuracy.

  inception-sweep experiments/module_design.py --workdir runs/module_design --parallel 2
"""

from regimes import DIGITS_32, SEEDS

BASE_CONFIG = "configs/digits.py"
OVERRIDES = DIGITS_32


def sweep():
    for naive in (False, True):
        for seed in SEEDS:
            yield {"model.naive": naive, "seed": seed}
