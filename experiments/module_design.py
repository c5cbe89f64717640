"""Does GoogLeNet need the 1x1 reductions? The naive Inception module vs the dimension-reduced one.

Claim (Szegedy et al. 2014, "Going deeper with convolutions", section 4 and Fig. 2): without 1x1
convolutions before the 3x3 and 5x5 convolutions and after the pooling branch, the module's output
width grows from stage to stage and the cost "blows up"; the reductions keep it affordable.
`experiments/results/costs.md` counts it on our modules: inception (3a) costs 2.37x as many MACs
naive, the whole naive network 6x. This study trains both forms (`model.naive`) on the same budget
and asks what the reductions cost in accuracy.

  inception-sweep experiments/module_design.py --workdir runs/module_design --parallel 2
  inception-report runs/module_design --out experiments/results/module_design
"""

from regimes import DIGITS_32

BASE_CONFIG = "configs/digits.py"
OVERRIDES = DIGITS_32
SEEDS = (0, 1, 2, 3, 4)  # cheap runs: five seeds narrow the spread


def sweep():
    for naive in (False, True):
        for seed in SEEDS:
            yield {"model.naive": naive, "seed": seed}
