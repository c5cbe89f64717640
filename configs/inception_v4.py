"""Inception-v4, Inception-ResNet-v2 or -v1 (`:model=inception_resnet_v2`, `:model=inception_resnet_v1`)
on ImageNet with the v4 paper's recipe (`inception_jax.trainer.config.inception_v4_2017`). Reported single-crop top-1 /
top-5 error (Table 2): 20.0 / 5.0 (v4), 19.9 / 4.9 (IR-v2), 21.3 / 5.5 (IR-v1). `:bf16` computes in
bfloat16 on accelerators; `--config.model.scan_blocks=True` compiles each stage's repeated blocks once.

  inception-train --config=configs/inception_v4.py:model=inception_resnet_v2 \
      --workdir=runs/irv2 --config.dataset.data_dir=/path/to/tfds
"""

from inception_jax.trainer.config import imagenet_config, inception_v4_2017


def get_config(arg=None):
    return imagenet_config(arg, inception_v4_2017, model="inception_v4")
