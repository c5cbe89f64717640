"""inception_resnet_v1 on ImageNet with the v4 paper's recipe (Szegedy et al. 2017, section 4).

RMSProp (decay 0.9, epsilon 1.0), learning rate 0.045 decayed x0.94 every 2 epochs, gradient clipping
(the paper calls it useful without a threshold; we use v3's 2.0), parameter averaging for evaluation,
20 replicas x 32 = batch 640; label smoothing 0.1 as TF-slim trains its relatives.
The paper reports 21.3% top-1 / 5.5% top-5 error single-crop (Table 2). IR-v1 has no aux head
in any reference, so none is trained here.

  python -m inception_jax.main --config=configs/inception_resnet_v1.py --workdir=runs/inception_resnet_v1 \
      --config.dataset.data_dir=/path/to/tfds
"""

from inception_jax.config_base import base_config, imagenet_recipe, parse_arg, shrink_for_local_run


def get_config(arg=None):
    args = parse_arg(arg, dataset="imagenet2012", runlocal=False, model="inception_resnet_v1")
    c = base_config()
    c.model.name = args.model
    c.model.aux_logits = False
    c.model.dropout_rate = 0.2  # TF-slim keep_prob 0.8
    imagenet_recipe(c, dataset=args.dataset)
    c.batch_size = 640
    c.eval_batch_size = 640
    c.num_epochs = 100.0
    c.optimizer.name = "rmsprop"
    c.schedule.name = "exponential"
    c.schedule.base_learning_rate = 0.045
    c.schedule.decay_rate = 0.94
    c.schedule.decay_epochs = 2.0
    c.grad_clip_norm = 2.0
    c.label_smoothing = 0.1
    c.aux_loss_weights = ()
    c.ema_decay = 0.9999
    c.bn_statistics = "per_device"
    if args.runlocal:
        shrink_for_local_run(c)
    return c
