"""`digits`: scikit-learn's bundled handwritten digits as a TFDS dataset, built offline in seconds.

`sklearn.datasets.load_digits` holds 1797 real 8x8 grayscale scans (UCI "optdigits"), ten classes of
about 180 each, shipped inside scikit-learn: no download, so `ensure_prepared` builds it anywhere, which
makes it the dataset of smoke runs, CI and the notebook. Features: `image` uint8 (8, 8, 1), rescaled
from 0-16 to 0-255 (`round(v * 255 / 16)`); `label` ClassLabel(10). Splits: a fixed stratified `test`
of 297 examples (`split_indices`) and `train`, the other 1500.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN = 1500
NUM_TEST = 297
_SPLIT_SEED = 0


def split_indices() -> dict[str, np.ndarray]:
    """Indices into `load_digits()` for each split, each sorted ascending.

    Each class gives `test` its share of 297 (largest remainder on `297 * n_class / 1797`, ties to the
    lower class), taken as the first of a permutation from `numpy.random.RandomState(_SPLIT_SEED)`,
    whose stream numpy keeps stable across releases."""
    from sklearn.datasets import load_digits  # Lazy: only needed to build the dataset.

    labels = load_digits().target
    counts = np.bincount(labels, minlength=10)
    share = NUM_TEST * counts / counts.sum()
    quota = np.floor(share).astype(int)
    remainder_order = sorted(range(10), key=lambda c: (-(share[c] - quota[c]), c))
    for c in remainder_order[: NUM_TEST - quota.sum()]:
        quota[c] += 1
    rng = np.random.RandomState(_SPLIT_SEED)
    test = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        test.extend(members[rng.permutation(len(members))[: quota[c]]])
    test = np.sort(np.asarray(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return {"train": train, "test": test}


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), split 1500 train / 297 test."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: stratified 1500/297 split of sklearn's load_digits.",
        "1.1.0": "Stored as array_record (random access: the trainer reads examples by global index).",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data ships with scikit-learn.
        return {name: self._generate_examples(indices) for name, indices in split_indices().items()}

    def _generate_examples(self, indices):
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        for i in indices:
            yield int(i), {"image": pixels[i][..., None], "label": int(digits.target[i])}


def ensure_prepared(data_dir: str | os.PathLike | None = None) -> tfds.core.DatasetBuilder:
    """Returns the `digits` builder for `data_dir` (None: TFDS default), building it there first if needed.

    Offline by construction: the builder has no downloads, and GCS lookups are switched off. Safe when
    several processes share `data_dir`: a process that loses the race to publish the files uses the
    winner's.
    """
    builder = Digits(data_dir=data_dir)
    if builder.is_prepared():
        return builder
    try:
        builder.download_and_prepare(
            file_format="array_record",  # random access, for `as_data_source`
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )
    except Exception:
        builder = Digits(data_dir=data_dir)
        if not builder.is_prepared():
            raise
    return Digits(data_dir=data_dir)  # A fresh builder reads the info written by the preparation.
