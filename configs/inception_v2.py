"""Inception-v2 (Rethinking paper, Table 3 row "Inception-v2") on ImageNet.

The row before "+ RMSProp", "+ Label Smoothing", "+ Factorized 7x7" and "+ BN-auxiliary": SGD with
momentum 0.9 (section 8: "our earlier experiments used momentum with decay 0.9"), learning rate 0.045
x0.94 every 2 epochs, clipping 2.0, no label smoothing, an aux head without BN weighted 0.4.
Reported: 23.4% top-1 error. Turn on the later rows one by one for the Table 3 ablation:
  --config.optimizer.name=rmsprop --config.label_smoothing=0.1 --config.model.factorize_7x7=True
  --config.model.bn_aux=True

  python -m inception_jax.main --config=configs/inception_v2.py --workdir=runs/v2 \
      --config.dataset.data_dir=/path/to/tfds
"""

from inception_jax.config_base import base_config, imagenet_recipe, parse_arg, shrink_for_local_run


def get_config(arg=None):
    args = parse_arg(arg, dataset="imagenet2012", runlocal=False)
    c = base_config()
    c.model.name = "inception_v2"
    c.model.aux_logits = True
    c.model.dropout_rate = 0.2
    imagenet_recipe(c, dataset=args.dataset)
    c.batch_size = 1600
    c.eval_batch_size = 1000
    c.num_epochs = 100.0
    c.optimizer.name = "sgd"
    c.optimizer.momentum = 0.9
    c.schedule.name = "exponential"
    c.schedule.base_learning_rate = 0.045
    c.schedule.decay_rate = 0.94
    c.schedule.decay_epochs = 2.0
    c.grad_clip_norm = 2.0
    c.label_smoothing = 0.0
    c.aux_loss_weights = (0.4,)
    c.ema_decay = 0.9999
    c.bn_statistics = "per_device"
    if args.runlocal:
        shrink_for_local_run(c)
    return c
