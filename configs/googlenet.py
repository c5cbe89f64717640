"""GoogLeNet on ImageNet with the 2014 paper's recipe (`inception_jax.trainer.config.googlenet_2014`). The paper reports
10.07% top-5 error for one model and one crop; torchvision's port reaches 69.8% top-1. `:paper` trains
the 2014 network (true 5x5 branches, LRN, dropout 0.4); `:bf16` computes in bfloat16 on accelerators.

  inception-train --config=configs/googlenet.py --workdir=runs/googlenet \
      --config.dataset.data_dir=/path/to/tfds
"""

from inception_jax.trainer.config import googlenet_2014, imagenet_config


def get_config(arg=None):
    return imagenet_config(arg, googlenet_2014, paper=False)
