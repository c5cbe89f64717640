"""Fine-tuning a converted pretrained model on the built-in `digits` dataset (works offline).

  inception-train --config=configs/finetune_digits.py:init_from=v3.msgpack --workdir=runs/ft

The model and its options come from the file, with a new 10-class classifier. The usual transfer recipe
(torchvision's fine-tuning tutorial, Keras' transfer-learning guide): the head and the last `blocks`
blocks train, the backbone at a tenth of the head's rate, every BatchNorm frozen (small batches of
upsampled digits give poor statistics); `:blocks=0` trains the head only. Usage: docs/training.md.
"""

from inception_jax.trainer.config import base_config, parse_arg
from inception_jax.weights import read_model_spec


def get_config(arg=None):
    args = parse_arg(arg, init_from="", blocks=2, image_size=75)
    if not args.init_from:
        raise ValueError(
            "configs/finetune_digits.py needs a weight file: "
            "--config=configs/finetune_digits.py:init_from=FILE.msgpack (from "
            "`inception-convert`)"
        )
    name, options = read_model_spec(args.init_from)
    c = base_config()
    c.model.name = name
    for key, value in options.items():
        if key != "num_classes":  # the dataset's 10 classes; the head is re-initialised
            c.model[key] = tuple(value) if isinstance(value, list) else value
    c.model.aux_logits = False
    c.init_from = args.init_from
    c.trainable = f"last:{args.blocks}" if args.blocks else "head"
    c.freeze_bn = True
    c.backbone_lr_multiplier = 0.1

    c.dataset.name = "digits"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "test"
    c.dataset.cache = True
    c.dataset.shuffle_buffer = 1500
    c.input.image_size = args.image_size  # 75: the smallest input Inception-v3/v4/IR-v2 accept
    c.input.crop_pct = 1.0
    c.input.interpolation = "bilinear"
    c.input.train_augment = "none"

    c.batch_size = 32
    c.eval_batch_size = 304
    c.num_epochs = 3.0
    c.optimizer.name = "sgd"
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 0.0
    c.schedule.name = "cosine"
    c.schedule.base_learning_rate = 0.01
    c.label_smoothing = 0.1
    c.log_every_steps = 10
    c.eval_every_steps = 50
    c.checkpoint_every_steps = 50
    return c
