"""The per-process tf.data input pipeline: TFDS -> augment -> numpy batches. TensorFlow stays in here.

The trainer sees only numpy: `make_train_iterator` and `make_eval_iterator` yield dicts of arrays,
`{"image": float32 (B, H, W, 3), "label": int32 (B,)}`, plus `"mask": bool (B,)` for eval. Each process
reads only its own shard of the split (`tfds.even_splits(split, process_count)[process_index]`) and
`B` is the process-local batch. Importing this module hides GPUs from TensorFlow, so tf.data never
takes accelerator memory from JAX.

The program never downloads. A dataset must already be prepared in `config.dataset.data_dir` (None:
the TFDS default, `~/tensorflow_datasets` or `$TFDS_DATA_DIR`); otherwise `dataset_info` and the
iterators fail at once with the command that prepares it. The one exception is `digits` (the built-in
scikit-learn digits builder, `inception_jax.data.digits`), which is built offline on first use.

Preparing the usual datasets (run once, on a machine with network; then copy the data dir if needed):

- `imagenet2012` (ILSVRC-2012, 1000 classes; 1,281,167 train / 50,000 validation). Manual download:
  register at https://image-net.org, put `ILSVRC2012_img_train.tar` and `ILSVRC2012_img_val.tar` in a
  folder, then `tfds build imagenet2012 --data_dir=DATA --manual_dir=FOLDER` (hours; about 150 GB).
  Config: `train_split="train"`, `eval_split="validation"` (the `test` split has no labels),
  `image_size=299`, `crop_pct=0.875`, `mean=std=(0.5, 0.5, 0.5)` for the Inception [-1, 1] input range.
  Labels are 0..999; TF-slim checkpoints are 1001-way with a background class at 0.
- `imagenette` (10 easy ImageNet classes, about 9.5k train / 3.9k validation):
  `tfds build imagenette/320px-v2 --data_dir=DATA` (also `160px-v2`, `full-size-v2`);
  `name="imagenette/320px-v2"`, `train_split="train"`, `eval_split="validation"`.
- `cifar10` / `cifar100` (32x32, 50k train / 10k test): `tfds build cifar10 --data_dir=DATA`;
  `eval_split="test"`. The pipeline upsamples to `image_size` (at least 75 for Inception-v3/v4 and
  IR-v2); `crop_pct=1.0` evaluates on the whole image, and `train_augment="resize_flip"` suits such
  small images better than an 8%-area crop.
- `tf_flowers` (3,670 photos, 5 classes) has only a `train` split: `tfds build tf_flowers`, then
  `train_split="train[:90%]"`, `eval_split="train[90%:]"`.
Any TFDS split string works (`"train[:10%]"`, `"train+validation"`); sharding applies on top of it.

Training stream and resuming (`start_step`): epoch `e` of a process is its shard read in file order,
shuffled with a buffer of `config.dataset.shuffle_buffer` seeded from `(config.seed, e)`; epochs follow
each other and batches run across epoch boundaries. Each example's augmentation is seeded from
`(config.seed, e, its index in the split's read order)`, so neither depends on where the stream
started. With `config.dataset.cache`, decoded images are kept in memory after the first epoch (JPEG
crops then come from the decoded image rather than from a crop-during-decode: see
`preprocess.decode_and_inception_crop`). A run
resumed at `start_step` jumps to epoch `start_step * B // shard_size` directly and skips the rest
within that epoch before augmenting (reading the skipped records, never decoding them): at most one
epoch of cheap reads, and the batches are exactly those the uninterrupted run would have produced
(same process count and local batch size). The order is shuffle-buffer based, not a full random
permutation: TFDS tfrecord files do not allow random access.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
from typing import Any, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from inception_jax.data import digits, preprocess

try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF already initialised its devices (someone used it before importing us).
    logging.getLogger(__name__).warning("TensorFlow's devices were initialised already; cannot hide GPUs.")

TRAIN_AUGMENTS = ("inception_crop", "resize_flip", "none")
_SHUFFLE_SALT = 0x5EED  # Keeps the shuffle seeds apart from the augmentation seeds of the same config.seed.


class DatasetNotPreparedError(FileNotFoundError):
    """The TFDS dataset is not prepared in the data dir; the message says how to prepare it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a dataset, read from its prepared TFDS metadata."""

    name: str
    num_classes: int
    num_train_examples: int  # In config.dataset.train_split, all processes together.
    num_eval_examples: int  # In config.dataset.eval_split, all processes together.
    image_shape: tuple  # As stored, e.g. (None, None, 3) for ImageNet, (8, 8, 1) for digits.
    label_names: tuple[str, ...] | None
    data_dir: str  # The prepared dataset's own folder (name/config/version).


def _cfg(section, name: str, default: Any) -> Any:
    value = section.get(name, default) if hasattr(section, "get") else getattr(section, name, default)
    return default if value is None else value


def _not_prepared_message(builder: tfds.core.DatasetBuilder, name: str) -> str:
    root = str(builder.data_dir_root)
    lines = [
        f"config.dataset.name={name!r}: TFDS dataset {builder.name} {builder.version} is not prepared in the "
        f"data dir {root!r} (no dataset_info.json in {builder.data_dir}). This program never downloads data.",
        "Prepare it once (with network where the data is downloaded), then point config.dataset.data_dir at it:",
    ]
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        manual = os.path.join(root, "downloads", "manual")
        lines += [
            f"  tfds build {name} --data_dir={root} --manual_dir={manual}",
            f"{builder.name} needs a manual download into the manual dir ({manual} by default):",
            "  " + " ".join(str(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).split()),
        ]
    else:
        lines.append(f"  tfds build {name} --data_dir={root}")
    return "\n".join(lines)


def _close_matches(name: str) -> list[str]:
    """Registered dataset names that look like `name`: those containing it first, then similar spellings."""
    base = str(name).split("/")[0].lower()
    known = sorted(set(tfds.list_builders(with_community_datasets=False)) | {"digits"})
    containing = [k for k in known if base and base in k]
    similar = difflib.get_close_matches(base, known, n=8, cutoff=0.6)
    return list(dict.fromkeys(sorted(containing, key=len) + similar))[:8]


def _builder(config) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder of `config.dataset`; fails fast (never downloads) when there is none."""
    name = config.dataset.name
    data_dir = _cfg(config.dataset, "data_dir", None)
    if name == "digits":
        return digits.ensure_prepared(data_dir)
    if tfds.core.naming.parse_builder_name_kwargs(str(name))[0].namespace:
        raise ValueError(
            f"config.dataset.name={name!r}: namespaced TFDS datasets (community, huggingface) need network "
            "access to resolve; prepare the dataset with `tfds build` and use its plain name."
        )
    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except tfds.core.DatasetNotFoundError:
        raise ValueError(
            f"config.dataset.name={name!r} is not a TFDS dataset, nor one prepared in config.dataset.data_dir="
            f"{data_dir!r}. Close matches: {_close_matches(name) or 'none'}. "
            "'digits' is the built-in offline dataset."
        ) from None
    if not builder.is_prepared() and not _readable(builder, config.dataset.train_split):
        raise DatasetNotPreparedError(_not_prepared_message(builder, name))
    return builder


def _readable(builder: tfds.core.DatasetBuilder, split) -> bool:
    """Whether `as_dataset` works although the files are missing: true under `tfds.testing.mock_data`.

    Cheap either way: an unprepared builder fails `as_dataset`'s existence checks before reading.
    """
    try:
        builder.as_dataset(split=split, read_config=tfds.ReadConfig(try_autocache=False))
    except Exception:  # noqa: BLE001 -- any failure means "not readable"; the caller explains.
        return False
    return True


def _split_size(builder: tfds.core.DatasetBuilder, split, field: str, config) -> int:
    if not builder.info.splits:
        # No split metadata although readable: a builder mocked by tfds.testing.mock_data without
        # metadata files. Its datasets declare their size; every (sub)split has all the mock examples.
        size = int(_read(builder, split).cardinality())
        if size < 0:
            raise ValueError(f"{config.dataset.name!r} has no split metadata and {split!r} no known size")
        return size
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, AssertionError) as e:
        raise ValueError(
            f"config.dataset.{field}={config.dataset[field]!r} does not select a split of "
            f"{config.dataset.name!r} (splits: {list(builder.info.splits)}): {e}"
        ) from None


def dataset_info(config) -> DatasetInfo:
    """Classes and split sizes of `config.dataset`, from the prepared metadata; reads no examples."""
    builder = _builder(config)
    features = builder.info.features
    label = features["label"]
    names = getattr(label, "names", None)
    return DatasetInfo(
        name=config.dataset.name,
        num_classes=int(label.num_classes),
        num_train_examples=_split_size(builder, config.dataset.train_split, "train_split", config),
        num_eval_examples=_split_size(builder, config.dataset.eval_split, "eval_split", config),
        image_shape=tuple(features["image"].shape),
        label_names=tuple(names) if names else None,
        data_dir=str(builder.data_dir),
    )


def _read(builder: tfds.core.DatasetBuilder, split) -> tf.data.Dataset:
    """The split in file order as {"image": encoded bytes, "label": int64}; images are decoded later."""
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(try_autocache=False),
    )
    return ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})


def _channels(builder: tfds.core.DatasetBuilder) -> int:
    channels = builder.info.features["image"].shape[-1]
    if channels not in (1, 3):
        raise ValueError(f"{builder.name}: images with {channels} channels are not supported (need 1 or 3)")
    return channels


def _decoded(image: tf.Tensor, channels: int) -> tf.Tensor:
    return preprocess.decode(image, channels) if image.dtype == tf.string else image


def _check_input(config) -> None:
    missing = [f"config.input.{k}" for k in ("image_size", "mean", "std") if _cfg(config.input, k, None) is None]
    if missing:
        raise ValueError(f"{', '.join(missing)} must be set (the trainer fills them from the model's defaults)")


def _finish(image: tf.Tensor, config) -> tf.Tensor:
    """[0, 255] image -> 3 channels -> normalised with config.input.mean/std."""
    return preprocess.normalize(preprocess.to_rgb(image), config.input.mean, config.input.std)


def _train_fn(config, channels: int):
    augment = _cfg(config.input, "train_augment", "inception_crop")
    if augment not in TRAIN_AUGMENTS:
        raise ValueError(f"config.input.train_augment={augment!r}; expected one of {TRAIN_AUGMENTS}")
    size = int(config.input.image_size)
    interpolation = _cfg(config.input, "interpolation", "bilinear")
    distort = bool(_cfg(config.input, "color_distortion", False))
    crop_pct = float(_cfg(config.input, "crop_pct", 1.0))
    seed = int(config.seed)

    def fn(ex):
        crop_seed, flip_seed, color_seed = tf.unstack(
            tf.random.experimental.stateless_split(preprocess.example_seed(seed, ex["epoch"], ex["index"]), 3)
        )
        image = ex["image"]
        if augment == "inception_crop":
            if image.dtype == tf.string:
                image = preprocess.decode_and_inception_crop(
                    image, crop_seed, size, channels=channels, interpolation=interpolation
                )
            else:
                image = preprocess.inception_crop(image, crop_seed, size, interpolation=interpolation)
            image = preprocess.random_flip(image, flip_seed)
        elif augment == "resize_flip":
            image = preprocess.resize_flip(_decoded(image, channels), flip_seed, size, interpolation=interpolation)
        else:  # "none": the evaluation transform.
            image = preprocess.central_crop(_decoded(image, channels), size, crop_pct, interpolation=interpolation)
        image = preprocess.to_rgb(image)
        if distort:
            image = preprocess.color_distortion(image / 255.0, color_seed) * 255.0
        image.set_shape([size, size, 3])
        return {"image": _finish(image, config), "label": tf.cast(ex["label"], tf.int32)}

    return fn


def _shard(builder, config, field: str, process_index: int, process_count: int):
    """(this process's sub-split, the sizes of every process's sub-split)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    shards = tfds.even_splits(config.dataset[field], n=process_count)
    sizes = [_split_size(builder, shard, field, config) for shard in shards]
    return shards[process_index], sizes


def make_train_iterator(
    config, *, process_index: int, process_count: int, local_batch_size: int, start_step: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Endless augmented training batches of this process's shard, starting at batch `start_step`.

    Yields {"image": float32 (local_batch_size, S, S, 3), "label": int32 (local_batch_size,)} with
    S = config.input.image_size. Deterministic given config.seed, the process layout and the batch size;
    see the module docstring for the stream's order and how `start_step` resumes it.
    """
    if local_batch_size <= 0 or start_step < 0:
        raise ValueError(f"need local_batch_size > 0 and start_step >= 0, got {local_batch_size}, {start_step}")
    _check_input(config)
    builder = _builder(config)
    channels = _channels(builder)
    train_fn = _train_fn(config, channels)
    shard, sizes = _shard(builder, config, "train_split", process_index, process_count)
    shard_size = sizes[process_index]
    if shard_size == 0:
        raise ValueError(
            f"config.dataset.train_split={config.dataset.train_split!r} leaves no examples for process "
            f"{process_index} of {process_count}"
        )
    first_index = sum(sizes[:process_index])  # Indices count within the whole split, across processes.

    base = _read(builder, shard).enumerate(start=first_index)
    base = base.map(lambda i, ex: {**ex, "index": i})
    if _cfg(config.dataset, "cache", False):
        base = base.map(lambda ex: {**ex, "image": preprocess.decode(ex["image"], channels)}).cache()

    buffer = int(_cfg(config.dataset, "shuffle_buffer", 10_000))
    shuffle_key = tf.constant([int(config.seed), _SHUFFLE_SALT], tf.int64)

    def epoch(e):
        key = tf.random.experimental.stateless_fold_in(shuffle_key, e)
        seed = tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64)
        shuffled = base.shuffle(max(buffer, 1), seed=seed, reshuffle_each_iteration=False)
        return shuffled.map(lambda ex: {**ex, "epoch": e})

    first_epoch, skip = divmod(start_step * local_batch_size, shard_size)
    ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).skip(skip)
    ds = ds.map(train_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return iter(ds.as_numpy_iterator())


class EvalBatches:
    """Iterator over a process's eval batches; `len()` is the batch count, the same on every process."""

    def __init__(self, iterator: Iterator[dict[str, np.ndarray]], num_batches: int):
        self._iterator = iterator
        self.num_batches = num_batches

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def __len__(self) -> int:
        return self.num_batches


def num_eval_batches(config, *, process_count: int, local_batch_size: int) -> int:
    """Batches each process yields in one eval: ceil(largest shard / local_batch_size)."""
    builder = _builder(config)
    _, sizes = _shard(builder, config, "eval_split", 0, process_count)
    return math.ceil(max(sizes) / local_batch_size)


def make_eval_iterator(config, *, process_index: int, process_count: int, local_batch_size: int) -> EvalBatches:
    """One pass over this process's shard of config.dataset.eval_split, in file order, as padded batches.

    Yields {"image": float32 (B, S, S, 3), "label": int32 (B,), "mask": bool (B,)}, every batch full
    size. Across processes each example appears exactly once with mask True; padding rows (zero image,
    label 0) have mask False. Every process yields the same number of batches (fully masked ones where
    its shard is shorter), so per-batch collectives in a multi-host eval line up.
    Transform: `preprocess.central_crop(image_size, crop_pct)`.
    """
    if local_batch_size <= 0:
        raise ValueError(f"need local_batch_size > 0, got {local_batch_size}")
    _check_input(config)
    builder = _builder(config)
    channels = _channels(builder)
    shard, sizes = _shard(builder, config, "eval_split", process_index, process_count)
    num_batches = math.ceil(max(sizes) / local_batch_size)
    size = int(config.input.image_size)
    crop_pct = float(_cfg(config.input, "crop_pct", 1.0))
    interpolation = _cfg(config.input, "interpolation", "bilinear")

    def eval_fn(ex):
        image = preprocess.central_crop(_decoded(ex["image"], channels), size, crop_pct, interpolation=interpolation)
        return {"image": _finish(image, config), "label": tf.cast(ex["label"], tf.int32), "mask": tf.constant(True)}

    ds = _read(builder, shard).map(eval_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    padding = {
        "image": tf.zeros([size, size, 3], tf.float32),
        "label": tf.constant(0, tf.int32),
        "mask": tf.constant(False),
    }
    num_padding = num_batches * local_batch_size - sizes[process_index]
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
    ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return EvalBatches(iter(ds.as_numpy_iterator()), num_batches)
