"""GoogLeNet on CIFAR-10 with the published Keras recipe (the seed's reference run).

The recipe trains the 2014 paper's network on CIFAR-10 images resized to 224x224: both auxiliary
classifiers with their losses weighted 0.3 (paper section 5), SGD with momentum 0.9, learning rate
0.01 cut by 4% every 8 epochs (x 0.96, the paper's section 6 schedule), batch 256, 25 epochs. It
reports 81.9% validation top-1 for the main classifier and 74.4% and 77.9% for the two auxiliary
ones. It names no augmentation, weight decay or label smoothing, so none is used. The network is the
paper's form (`configs/googlenet.py:paper`): true 5x5 branches, no BatchNorm (biased convolutions and
local response normalisation), dropout 0.4 before the classifier and 0.7 in the heads. CIFAR-10 has
no validation split; the 10,000-image test split is the eval split.

Prepare CIFAR-10 once (about 160 MB, on a machine with network): `tfds build cifar10 --data_dir=DATA`,
then

  inception-train --config=configs/googlenet_cifar10.py --workdir=runs/googlenet_cifar10 \
      --config.dataset.data_dir=DATA

The trainer evaluates the main classifier only (the aux heads run in training, not at eval).
`:runlocal` shrinks it for a smoke run.
"""

from inception_jax.trainer.config import base_config, parse_arg, shrink_for_local_run


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False)
    c = base_config()
    c.model.name = "googlenet"
    c.model.aux_logits = True
    c.model.branch3_kernel = 5
    c.model.norm = "lrn"
    c.model.dropout_rate = 0.4
    c.model.aux_dropout_rate = 0.7

    c.dataset.name = "cifar10"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "test"
    c.dataset.shuffle_buffer = 10_000
    c.input.image_size = 224
    c.input.crop_pct = 1.0  # resize the whole 32x32 image, as the recipe does; no crop
    c.input.interpolation = "bilinear"
    c.input.train_augment = "none"

    c.batch_size = 256
    c.eval_batch_size = 500
    c.num_epochs = 25.0
    c.optimizer.name = "sgd"
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 0.0
    c.schedule.name = "exponential"
    c.schedule.base_learning_rate = 0.01
    c.schedule.decay_rate = 0.96
    c.schedule.decay_epochs = 8.0
    c.schedule.staircase = True
    c.schedule.warmup_epochs = 0.0
    c.aux_loss_weights = (0.3, 0.3)
    c.label_smoothing = 0.0

    c.log_every_steps = 50
    c.eval_every_steps = 195  # about once per epoch (50,000 // 256 = 195 steps)
    c.checkpoint_every_steps = 195
    if args.runlocal:
        shrink_for_local_run(c)
    return c
