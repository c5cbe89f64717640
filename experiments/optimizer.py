"""SGD with momentum vs RMSProp with epsilon 1.0, on the same GoogLeNet, schedule and budget.

Claim (Szegedy et al. 2015, "Rethinking the Inception Architecture", section 8 and Table 3): RMSProp
with decay 0.9 and epsilon 1.0 trained their best models; switching Inception-v2 from SGD to RMSProp
lowered top-1 error from 23.4% to 23.1%. Only the optimizer changes here (TF1 RMSProp as in
`inception_jax/optim.py`: decay 0.9, momentum 0.9, epsilon 1.0 inside the square root; vs the digits
recipe's SGD with Nesterov momentum 0.9); both keep the learning rate 0.05 and its cosine schedule.
With epsilon 1.0 RMSProp's step is lr * g / sqrt(1 + mean g^2), close to SGD's while gradients are
small, so the same learning rate suits both.

  inception-sweep experiments/optimizer.py --workdir runs/optimizer --parallel 2
  inception-report runs/optimizer --out experiments/results/optimizer
"""

from regimes import DIGITS_32

BASE_CONFIG = "configs/digits.py"
OVERRIDES = {**DIGITS_32, "optimizer.rms_decay": 0.9, "optimizer.eps": 1.0, "optimizer.momentum": 0.9}
SEEDS = (0, 1, 2, 3, 4)


def sweep():
    for name in ("sgd", "rmsprop"):
        for seed in SEEDS:
            yield {"optimizer.name": name, "seed": seed}
