"""Fine-tuning a converted pretrained model on a folder of your own images.

  inception-train --config=configs/finetune_folder.py:init_from=v3.msgpack,data=~/photos --workdir=runs/mine

`data` is an image folder (`DIR/train/<class>` + `DIR/val/<class>`, or `DIR/<class>` split by
`val_fraction`: docs/training.md). Inputs are prepared as the weights' publisher evaluates them (the
preprocessing the file records; `preprocessing=PRESET` names one for files that record none), training
with Inception crops at that size; `config.transfer_recipe` (`:blocks=0`: the head only).
"""

import os

from inception_jax import preprocessing
from inception_jax.trainer.config import base_config, parse_arg, transfer_recipe
from inception_jax.weights import read_preprocessing


def get_config(arg=None):
    args = parse_arg(arg, init_from="", data="", blocks=2, epochs=10.0, batch=32, preprocessing="")
    if not args.init_from or not args.data:
        raise ValueError(
            "configs/finetune_folder.py needs a weight file and an image folder: "
            "--config=configs/finetune_folder.py:init_from=FILE.msgpack,data=DIR"
        )
    transform = preprocessing.preset(args.preprocessing) if args.preprocessing else read_preprocessing(args.init_from)
    if transform is None:
        raise ValueError(
            f"{args.init_from} records no preprocessing; add preprocessing=PRESET to the config argument "
            f"(one of {', '.join(preprocessing.PRESETS)})"
        )
    c = base_config()
    transfer_recipe(c, args.init_from, args.blocks)
    c.dataset.name = "folder:" + os.path.expanduser(str(args.data))
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    for key, value in transform.config_fields().items():
        c.input[key] = value
    c.input.train_augment = "inception_crop"

    c.batch_size = args.batch
    c.eval_batch_size = args.batch
    c.num_epochs = float(args.epochs)
    c.log_every_steps = 10
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    return c
