"""The scale every study runs at, shared so that studies compare like with like.

The built-in digits set saturates near 98% with the quickstart model (README), which hides every
difference. The studies use its low-data regime instead: the first 10% of the training split (150
images, about 15 per digit; TFDS split slicing), a quarter of the quickstart's width, and a fixed
number of steps of batch 32; every run is evaluated on the whole 297-image test split.
GoogLeNet-sized studies keep the quickstart's 32 px; Inception-v2/v3/v4 and Inception-ResNet need at
least 75 px, so their studies upsample the 8x8 digits to 75 px, and v4 / Inception-ResNet run one
block per stage. Everything else is `configs/digits.py`'s recipe: SGD with Nesterov momentum 0.9,
learning rate 0.05 with a one-epoch warmup and cosine decay, weight decay 5e-4, label smoothing 0.1,
dropout 0.2.
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
