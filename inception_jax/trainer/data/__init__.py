"""Input data: the offline `digits` TFDS builder, image folders, tf.data preprocessing ops and the
per-process pipeline.

Importing this package imports TensorFlow (and hides GPUs from it); the rest of inception_jax never does.
"""

from inception_jax.trainer.data import digits, folder, preprocess
from inception_jax.trainer.data.pipeline import (
    DatasetInfo,
    DatasetNotPreparedError,
    EvalBatches,
    dataset_info,
    epoch_permutation,
    global_order,
    make_eval_iterator,
    make_train_iterator,
)

__all__ = [
    "DatasetInfo",
    "DatasetNotPreparedError",
    "EvalBatches",
    "dataset_info",
    "digits",
    "folder",
    "epoch_permutation",
    "global_order",
    "make_eval_iterator",
    "make_train_iterator",
    "preprocess",
]
