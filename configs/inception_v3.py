"""Inception-v3 on ImageNet with the Rethinking paper's recipe (Szegedy et al. 2016, section 8).

RMSProp (decay 0.9, epsilon 1.0), learning rate 0.045 decayed x0.94 every 2 epochs, gradient clipping
at 2.0, label smoothing 0.1 (section 7), the BN-auxiliary head weighted 0.4 (TF-slim's
train_image_classifier.py, REFERENCES.md §2.6; the paper does not state a weight), parameter
averaging for evaluation, 100 epochs at batch 32 x 50 replicas = 1600. The paper reports 21.2% top-1 /
5.6% top-5 error single-crop (Table 3).

  python -m inception_jax.main --config=configs/inception_v3.py --workdir=runs/v3 \
      --config.dataset.data_dir=/path/to/tfds
  # smoke run on imagenette: --config=configs/inception_v3.py:dataset=imagenette,runlocal
"""

from inception_jax.config_base import base_config, imagenet_recipe, parse_arg, shrink_for_local_run


def get_config(arg=None):
    args = parse_arg(arg, dataset="imagenet2012", runlocal=False)
    c = base_config()
    c.model.name = "inception_v3"
    c.model.aux_logits = True
    c.model.dropout_rate = 0.2  # TF-slim's keep_prob 0.8 (REFERENCES.md §1.2)
    imagenet_recipe(c, dataset=args.dataset)

    c.batch_size = 1600
    c.eval_batch_size = 1000
    c.num_epochs = 100.0
    c.optimizer.name = "rmsprop"
    c.optimizer.rms_decay = 0.9
    c.optimizer.momentum = 0.9
    c.optimizer.eps = 1.0
    c.optimizer.weight_decay = 4e-5
    c.schedule.name = "exponential"
    c.schedule.base_learning_rate = 0.045
    c.schedule.decay_rate = 0.94
    c.schedule.decay_epochs = 2.0
    c.schedule.staircase = True
    c.grad_clip_norm = 2.0
    c.label_smoothing = 0.1
    c.aux_loss_weights = (0.4,)
    c.ema_decay = 0.9999
    c.bn_statistics = "per_device"  # the paper trained 32 images per replica
    if args.runlocal:
        shrink_for_local_run(c)
    return c
