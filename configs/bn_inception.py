"""BN-Inception on ImageNet with the BN paper's "BN-x30" recipe (`inception_jax.trainer.config.bn_inception_2015`); the
paper reports 74.8% top-1 for it. `:bf16` computes in bfloat16 on accelerators.

  inception-train --config=configs/bn_inception.py --workdir=runs/bn_inception \
      --config.dataset.data_dir=/path/to/tfds
"""

from inception_jax.trainer.config import bn_inception_2015, imagenet_config


def get_config(arg=None):
    return imagenet_config(arg, bn_inception_2015)
