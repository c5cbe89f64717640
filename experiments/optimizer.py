"""SGD with momentum vs RMSProp with epsilon 1.0, on the same GoogLeNet, schedule and budget.

Rethinking (section 8, Table 3) trained its best models with TF's RMSProp, decay 0.9 and epsilon 1.0
(REFERENCES.md §5). Only the optimizer changes (`inception_jax/optim.py`'s TF1 RMSProp vs the digits
recipe's Nesterov SGD), both at learning rate 0.05 on a cosine: with epsilon 1.0 RMSProp's step,
lr * g / sqrt(1 + mean g^2), is close to SGD's while gradients are small.

  inception-sweep experiments/optimizer.py --workdir runs/optimizer --parallel 2
"""

from regimes import DIGITS_32, SEEDS

BASE_CONFIG = "configs/digits.py"
OVERRIDES = {**DIGITS_32, "optimizer.rms_decay": 0.9, "optimizer.eps": 1.0, "optimizer.momentum": 0.9}


def sweep():
    for name in ("sgd", "rmsprop"):
        for seed in SEEDS:
            yield {"optimizer.name": name, "seed": seed}
