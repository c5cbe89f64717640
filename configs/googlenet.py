"""GoogLeNet (Inception v1) on ImageNet with the 2014 paper's recipe (Szegedy et al. 2015, section 6).

SGD with momentum 0.9, the learning rate cut by 4% every 8 epochs, Polyak averaging for the final
model, two aux heads weighted 0.3 each (section 5), aux dropout 0.7. The paper gives no base learning
rate; 0.01 x batch/256 is a common choice (Caffe's bvlc_googlenet used 0.01 at batch 32). The
paper reports 10.07% top-5 error for one model, one crop (no top-1); torchvision's port reaches
69.8% top-1. `:paper` gives the 2014 form (true 5x5 branch, LRN instead of BN, dropout 0.4).

  python -m inception_jax.main --config=configs/googlenet.py --workdir=runs/googlenet \
      --config.dataset.data_dir=/path/to/tfds
"""

from inception_jax.config_base import base_config, imagenet_recipe, parse_arg, shrink_for_local_run


def get_config(arg=None):
    args = parse_arg(arg, dataset="imagenet2012", runlocal=False, paper=False)
    c = base_config()
    c.model.name = "googlenet"
    c.model.aux_logits = True
    if args.paper:
        c.model.branch3_kernel = 5
        c.model.norm = "lrn"
        c.model.dropout_rate = 0.4
    imagenet_recipe(c, dataset=args.dataset)
    c.batch_size = 256
    c.eval_batch_size = 500
    c.num_epochs = 90.0
    c.optimizer.name = "sgd"
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 2e-4
    c.schedule.name = "exponential"
    c.schedule.base_learning_rate = 0.01
    c.schedule.decay_rate = 0.96
    c.schedule.decay_epochs = 8.0
    c.schedule.staircase = True
    c.aux_loss_weights = (0.3, 0.3)
    c.ema_decay = 0.9999
    if args.runlocal:
        shrink_for_local_run(c)
    return c
