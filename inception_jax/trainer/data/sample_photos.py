"""`sample_photos`: ImageNet-like JPEGs made offline from scikit-learn's two sample photographs.

Decoding and augmenting full-size JPEGs is the input pipeline's real cost, which the 8x8 `digits` do not
exercise; this gives `inception-bench --mode input` that workload anywhere, with no network. Source:
`sklearn.datasets.load_sample_images()`, china.jpg and flower.jpg (CC BY 2.0; attribution in
scikit-learn's datasets/images/README.txt). One `train` split of `num_train` seeded random views, stored
as array_record; a data dir holds one build, whatever `num_train` and `seed` it was built with.
"""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN = 512
LABELS = ("china", "flower")
SIZES = ((375, 500), (500, 375))  # (height, width): portrait, landscape
JPEG_QUALITY = 90


def make_example(photos: list, seed: int, index: int) -> tuple[bytes, int]:
    """Example `index`: (JPEG bytes, label); `photos` are the PIL images of `load_sample_images()`.

    Drawn from `default_rng([seed, index])`: the label picks the photo; the view is landscape 500x375 (3 in
    4) or portrait 375x500, ImageNet's typical sizes, cut as a crop of that aspect ratio covering 50%-100%
    of the largest one's side, resized bicubically, flipped with probability 1/2, saved as JPEG quality 90.
    """
    from PIL import Image

    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(photos)))
    photo = photos[label]
    height, width = SIZES[int(rng.random() < 0.75)]
    crop_h = rng.uniform(0.5, 1.0) * min(photo.height, photo.width * height / width)
    crop_w = crop_h * width / height
    top, left = rng.uniform(0, photo.height - crop_h), rng.uniform(0, photo.width - crop_w)
    image = photo.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), label


def load_photos() -> list:
    from PIL import Image
    from sklearn.datasets import load_sample_images  # Lazy: only needed to build the dataset.

    return [Image.fromarray(image) for image in load_sample_images().images]


class SamplePhotos(tfds.core.GeneratorBasedBuilder):
    """ImageNet-sized JPEG views of scikit-learn's two sample photos (2 classes), for timing the pipeline."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(self, *, num_train: int = NUM_TRAIN, seed: int = 0, **kwargs):
        self.num_train, self.seed = num_train, seed
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=LABELS),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_sample_images.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the photos ship with scikit-learn.
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        photos = load_photos()
        for i in range(self.num_train):
            image, label = make_example(photos, self.seed, i)
            yield i, {"image": image, "label": label}  # bytes: stored as encoded, not re-encoded


def ensure_prepared(
    data_dir: str | os.PathLike | None = None, *, num_train: int = NUM_TRAIN, seed: int = 0
) -> tfds.core.DatasetBuilder:
    """Returns the `sample_photos` builder for `data_dir` (None: TFDS default), building it there first
    if needed; offline, as `digits.ensure_prepared`."""
    builder = SamplePhotos(data_dir=data_dir, num_train=num_train, seed=seed)
    if not builder.is_prepared():
        builder.download_and_prepare(
            file_format="array_record",  # random access, for `as_data_source`
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )
    return SamplePhotos(data_dir=data_dir)  # A fresh builder reads the info written by the preparation.
