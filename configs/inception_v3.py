"""Inception-v3, or Table 3's Inception-v2 (`:model=inception_v2`), on ImageNet with the Rethinking
paper's recipe (`inception_jax.trainer.config.rethinking_2016`). Reported single-crop top-1 error: 21.2% (v3), 23.4%
(v2). `:bf16` computes in bfloat16 on accelerators; `:dataset=imagenette,runlocal` is a smoke run.
Table 3's rows in turn, from v2: --config.optimizer.name=rmsprop --config.label_smoothing=0.1
--config.model.factorize_7x7=True --config.model.bn_aux=True.

  inception-train --config=configs/inception_v3.py --workdir=runs/v3 \
      --config.dataset.data_dir=/path/to/tfds
"""

from inception_jax.trainer.config import imagenet_config, rethinking_2016


def get_config(arg=None):
    return imagenet_config(arg, rethinking_2016, model="inception_v3")
