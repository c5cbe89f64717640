"""Fine-tuning a converted pretrained model on the built-in `digits` dataset (works offline).

  inception-train --config=configs/finetune_digits.py:init_from=v3.msgpack --workdir=runs/ft

The file's model with a new 10-class classifier, `config.transfer_recipe` (`:blocks=0` trains the head
only); digits are upsampled to 75 px, the smallest input Inception-v3/v4/IR-v2 accept. docs/training.md.
"""

from inception_jax.trainer.config import base_config, parse_arg, transfer_recipe


def get_config(arg=None):
    args = parse_arg(arg, init_from="", blocks=2, image_size=75)
    if not args.init_from:
        raise ValueError(
            "configs/finetune_digits.py needs a weight file: "
            "--config=configs/finetune_digits.py:init_from=FILE.msgpack (from `inception-convert`)"
        )
    c = base_config()
    transfer_recipe(c, args.init_from, args.blocks)
    c.dataset.name = "digits"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "test"
    c.dataset.cache = True
    c.dataset.shuffle_buffer = 1500
    c.input.image_size = args.image_size
    c.input.crop_pct = 1.0
    c.input.interpolation = "bilinear"
    c.input.train_augment = "none"

    c.batch_size = 32
    c.eval_batch_size = 304
    c.num_epochs = 3.0
    c.log_every_steps = 10
    c.eval_every_steps = 50
    c.checkpoint_every_steps = 50
    return c
