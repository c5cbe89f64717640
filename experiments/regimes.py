"""The scale every study runs at, shared so that studies compare like with like.

The quickstart's digits setting saturates near 98% and hides every difference, so the studies use its
low-data regime: the first 10% of the training split (150 images), a quarter of the width, a fixed number
of steps of batch 32, evaluation on the whole 297-image test split. GoogLeNet studies keep 32 px; the
others need 75 px, with one block per stage for v4 and Inception-ResNet. The rest is `configs/digits.py`.
"""

SEEDS = (0, 1, 2)

DIGITS_32 = {
    "dataset.train_split": "train[:10%]",
    "model.width_multiplier": 0.25,
    "num_epochs": 0.0,
    "total_steps": 500,
    "batch_size": 32,
    "log_every_steps": 10,
    "eval_every_steps": 50,
    "checkpoint_every_steps": 100,
    "progress_bar": False,
}

DIGITS_75 = {**DIGITS_32, "input.image_size": 75, "total_steps": 300}


def with_seeds(settings, seeds=SEEDS):
    """Each setting's runs, one per seed: the usual `sweep()` body."""
    for setting in settings:
        for seed in seeds:
            yield {**setting, "seed": seed}
