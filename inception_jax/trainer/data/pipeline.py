"""The per-process tf.data input pipeline: TFDS or an image folder -> augment -> numpy batches.

`make_train_iterator` / `make_eval_iterator` yield this process's rows of each global batch as uint8
images (normalised later, on the devices) and int32 labels, plus a mask for eval padding. Examples are
read by index in a global order drawn from the seed, so batches do not depend on the process count and
resuming is free (docs/training.md, "Data order"). Nothing is downloaded: preparing datasets is in
docs/training.md, "Preparing datasets". TensorFlow stays in this package; GPUs are hidden from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from inception_jax.preprocessing import EvalTransform
from inception_jax.trainer.data import digits, folder, preprocess

log = logging.getLogger(__name__)

try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF already initialised its devices (someone used it before importing us).
    log.warning("TensorFlow's devices were initialised already; cannot hide GPUs.")

TRAIN_AUGMENTS = ("inception_crop", "resize_flip", "none")
_SHUFFLE_SALT = 0x5EED  # Keeps the order's seeds apart from the augmentation seeds of the same config.seed.


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
    random_access: bool  # Readable by index: the batches do not depend on the process count.


def _cfg(section, name: str, default: Any) -> Any:
    value = section.get(name, default) if hasattr(section, "get") else getattr(section, name, default)
    return default if value is None else value


def _not_prepared_message(builder: tfds.core.DatasetBuilder, name: str) -> str:
    root = str(builder.data_dir_root)
    build = f"tfds build {name} --file_format=array_record --data_dir={root}"
    lines = [
        f"config.dataset.name={name!r}: TFDS dataset {builder.name} {builder.version} is not prepared in the "
        f"data dir {root!r} (no dataset_info.json in {builder.data_dir}). This program never downloads data.",
        "Prepare it once (with network where the data is downloaded), then point config.dataset.data_dir at it:",
    ]
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        manual = os.path.join(root, "downloads", "manual")
        lines += [
            f"  {build} --manual_dir={manual}",
            f"{builder.name} needs a manual download into the manual dir ({manual} by default):",
            "  " + " ".join(str(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).split()),
        ]
    else:
        lines.append(f"  {build}")
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
    """Whether the split reads although the files are missing: true under `tfds.testing.mock_data`.

    Cheap either way: an unprepared builder fails the readers' existence checks before reading.
    """
    try:
        builder.as_dataset(split=split, read_config=tfds.ReadConfig(try_autocache=False))
    except Exception:  # noqa: BLE001 -- any failure means "not readable"; the caller explains.
        return False
    return True


def _source(builder: tfds.core.DatasetBuilder, split):
    """TFDS's random-access source of `split` with images left encoded, or None (tfrecord only)."""
    if not isinstance(builder.info.features["image"], tfds.features.Image):
        return None
    try:
        return builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    except (NotImplementedError, ValueError):  # no random-access file format among the prepared ones
        return None


def _split_size(builder: tfds.core.DatasetBuilder, split, field: str, config) -> int:
    if not builder.info.splits:
        # No split metadata although readable: a builder mocked by tfds.testing.mock_data without
        # metadata files. Its sources declare their size; every (sub)split has all the mock examples.
        source = _source(builder, split)
        size = len(source) if source is not None else int(_read(builder, split).cardinality())
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


def _folder(config) -> folder.Folder:
    """The image folder of `config.dataset.name` ("folder:DIR"), scanned once per process."""
    return folder.load(
        config.dataset.name,
        val_fraction=float(_cfg(config.dataset, "val_fraction", 0.1)),
        split_seed=int(_cfg(config.dataset, "split_seed", 0)),
        skip_bad_images=bool(_cfg(config.dataset, "skip_bad_images", False)),
    )


def _open(config, field: str):
    """(builder, source, features, channels) of the split config.dataset.`field`: a TFDS builder and its
    random-access source (None when stored as tfrecord only), or an image folder's source (no builder)."""
    split = config.dataset[field]
    if folder.is_folder(config.dataset.name):
        return None, _folder(config).split(split, field), None, folder.CHANNELS
    builder = _builder(config)
    return builder, _source(builder, split), builder.info.features, _channels(builder)


def dataset_info(config) -> DatasetInfo:
    """Classes and split sizes of `config.dataset`, from the prepared metadata; reads no examples.
    An image folder is scanned (and its images checked) here, on first use."""
    if folder.is_folder(config.dataset.name):
        data = _folder(config)
        return DatasetInfo(
            name=config.dataset.name,
            num_classes=len(data.class_names),
            num_train_examples=len(data.split(config.dataset.train_split, "train_split")),
            num_eval_examples=len(data.split(config.dataset.eval_split, "eval_split")),
            image_shape=(None, None, folder.CHANNELS),
            label_names=data.class_names,
            data_dir=data.root,
            random_access=True,
        )
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
        random_access=_source(builder, config.dataset.train_split) is not None,
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


def _check_rows(global_batch_size: int, rows) -> tuple[int, int]:
    start, stop = (rows.start, rows.stop) if isinstance(rows, slice) else tuple(rows)
    if not 0 <= start < stop <= global_batch_size:
        raise ValueError(f"rows={rows!r} must be a non-empty part of the global batch [0, {global_batch_size})")
    return int(start), int(stop)


def _finish(image: tf.Tensor) -> tf.Tensor:
    """[0, 255] image -> 3 channels, rounded to uint8. Batches travel to the devices at a quarter of
    float32's bytes and are normalised there with config.input.mean/std (`train.normalise_images`), the
    way PIL-based pipelines (timm, torchvision) also hand uint8 pixels to their normalisation."""
    image = tf.cast(preprocess.to_rgb(image), tf.float32)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


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
        return {"image": _finish(image), "label": tf.cast(ex["label"], tf.int32)}

    return fn


def _eval_fn(config, channels: int):
    transform = EvalTransform(
        image_size=int(config.input.image_size),
        crop_pct=float(_cfg(config.input, "crop_pct", 1.0)),
        interpolation=_cfg(config.input, "interpolation", "bilinear"),
        mean=config.input.mean,
        std=config.input.std,
        resize=_cfg(config.input, "eval_resize", "shorter_side"),
        antialias=bool(_cfg(config.input, "eval_antialias", True)),
    )

    def fn(ex):
        image = preprocess.eval_transform(_decoded(ex["image"], channels), transform)
        return {"image": image, "label": tf.cast(ex["label"], tf.int32), "mask": tf.constant(True)}

    return fn


# ---------------------------------------------------------------------------------------------- order


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the split in `epoch`: a permutation of `range(num_examples)` drawn from (seed, epoch)."""
    return np.random.default_rng([int(seed), _SHUFFLE_SALT, int(epoch)]).permutation(num_examples)


def global_order(num_examples: int, seed: int, global_batch_size: int, rows, start_step: int = 0):
    """Yields `(indices, epochs)` of this process's `rows` of global batches `start_step, start_step + 1, ...`.

    Global batch `k` is positions `[k * B, (k + 1) * B)` of the epochs' permutations laid end to end,
    so a batch may span two epochs; it depends on the seed and `B` only, never on how the rows are split.
    """
    start, stop = _check_rows(global_batch_size, rows)
    offsets = np.arange(start, stop, dtype=np.int64)
    permutations: dict[int, np.ndarray] = {}
    for step in itertools.count(start_step):
        positions = step * global_batch_size + offsets
        epochs = positions // num_examples
        indices = np.empty_like(positions)
        for e in np.unique(epochs):
            if e not in permutations:
                permutations = {k: v for k, v in permutations.items() if k >= e - 1}
                permutations[e] = epoch_permutation(num_examples, seed, e)
            here = epochs == e
            indices[here] = permutations[e][positions[here] % num_examples]
        yield indices, epochs


class _Records:
    """Reads a split's examples by index from a TFDS random-access source, or an image folder's
    (`folder.Source`, with `features` None: it holds each file's bytes and label).

    Serialized records are read by array_record's batched reader (C++, outside the GIL) and parsed in
    TensorFlow's parallel map, as a tfrecord stream is. Sources that hold no serialized records
    (`tfds.testing.mock_data`'s, image folders) are read in Python instead. With `cache`, the split is
    read once and kept in memory: decoded, when every image has the same shape (digits, CIFAR), else
    as encoded records.
    """

    def __init__(self, source, features, channels: int, cache: bool):
        self.size = len(source)
        self._features = features
        raw = getattr(source, "data_source", None)
        self._serialized = raw is not None and self.size > 0 and isinstance(raw[0], bytes)
        if self._serialized:
            self._read_many = lambda keys: raw.__getitems__(keys)
        else:
            self._read_many = lambda keys: [source[k] for k in keys]
        self._cached = self._decoded = None
        if cache:
            self._cached = self._read_many(list(range(self.size)))
            if features is not None and None not in features["image"].shape and self.size:
                self._decoded = self._decode_all(channels)

    def _decode_all(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Every cached example decoded, as (uint8 images [N, H, W, C], int64 labels [N])."""
        ds = tf.data.Dataset.from_tensor_slices(self._read(np.arange(self.size)))
        ds = ds.map(lambda *r: self.example(self._as_row(r)), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(lambda ex: (preprocess.decode(ex["image"], channels), ex["label"]))
        images, labels = next(iter(ds.batch(self.size).as_numpy_iterator()))
        return images, labels.astype(np.int64)

    def _as_row(self, read) -> dict:
        return {"record": read[0]} if self._serialized else {"image": read[0], "label": read[1]}

    def _read(self, indices: np.ndarray):
        keys = [int(i) for i in indices]
        if self._decoded is not None:
            return self._decoded[0][keys], self._decoded[1][keys]
        records = [self._cached[k] for k in keys] if self._cached is not None else self._read_many(keys)
        if self._serialized:
            return (np.array(records, dtype=object),)
        return (
            np.array([r["image"] for r in records], dtype=object),
            np.array([int(r["label"]) for r in records], dtype=np.int64),
        )

    def rows(self, index_batches, num_rows: int) -> tf.data.Dataset:
        """`index_batches` (a generator function of (indices, extra) pairs) -> one element per row,
        {"record", or "image" and "label"; "index", "extra"}, in order; `example` finishes a row."""
        spec = (tf.TensorSpec([num_rows], tf.int64), tf.TensorSpec([num_rows], tf.int64))
        ds = tf.data.Dataset.from_generator(index_batches, output_signature=spec)
        if self._decoded is not None:
            types, shapes = (tf.uint8, tf.int64), ([num_rows, *self._decoded[0].shape[1:]], [num_rows])
        elif self._serialized:
            types, shapes = (tf.string,), ([num_rows],)
        else:
            types, shapes = (tf.string, tf.int64), ([num_rows], [num_rows])

        def read(indices, extra):
            out = tf.numpy_function(self._read, [indices], types, stateful=False)
            for tensor, shape in zip(out, shapes):
                tensor.set_shape(shape)
            row = {"record": out[0]} if len(out) == 1 else {"image": out[0], "label": out[1]}
            return {**row, "index": indices, "extra": extra}

        return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()

    def example(self, row) -> dict:
        """{"image" (encoded, or decoded from the cache), "label"} of a row of `rows`."""
        if "record" not in row:
            return {"image": row["image"], "label": row["label"]}
        example = self._features.deserialize_example(row["record"], decoders={"image": tfds.decode.SkipDecoding()})
        return {"image": example["image"], "label": example["label"]}


def _warn_no_random_access(config) -> None:
    log.warning(
        "config.dataset.name=%r is stored without random access (tfrecord): each process reads its own shard "
        "of the split, so which examples form a batch depends on the number of processes. For the same "
        "batches on any cluster size, convert it once: tfds convert_format --dataset_version_dir=<its "
        "folder> --out_file_format=array_record",
        config.dataset.name,
    )


# ---------------------------------------------------------------------------------------------- train


def make_train_iterator(
    config, *, global_batch_size: int, rows, start_step: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Endless augmented training batches: this process's `rows` of global batches `start_step, ...`.

    Yields {"image": uint8 (R, S, S, 3), "label": int32 (R,)} with R = the number of rows and
    S = config.input.image_size. Deterministic given config.seed and the global batch size; see the
    module docstring for the order and how `start_step` resumes it.
    """
    if global_batch_size <= 0 or start_step < 0:
        raise ValueError(f"need global_batch_size > 0 and start_step >= 0, got {global_batch_size}, {start_step}")
    start, stop = _check_rows(global_batch_size, rows)
    _check_input(config)
    builder, source, features, channels = _open(config, "train_split")
    train_fn = _train_fn(config, channels)
    split = config.dataset.train_split
    if source is None:
        _warn_no_random_access(config)
        local = stop - start
        ds = _stream_train(
            builder, config, channels, split, start // local, global_batch_size // local, local, start_step
        )
    else:
        records = _Records(source, features, channels, bool(_cfg(config.dataset, "cache", False)))
        if records.size == 0:
            raise ValueError(f"config.dataset.train_split={split!r} has no examples")
        order = lambda: global_order(records.size, int(config.seed), global_batch_size, (start, stop), start_step)
        augment = train_fn  # "extra" is each row's epoch; parsing and augmenting are one map
        train_fn = lambda row: augment({**records.example(row), "index": row["index"], "epoch": row["extra"]})
        ds = records.rows(order, stop - start)
    ds = ds.map(train_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(stop - start, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return iter(ds.as_numpy_iterator())


def _stream_train(builder, config, channels, split, process_index, process_count, local_batch_size, start_step):
    """The fallback for tfrecord-only datasets: this process's shard through a seeded shuffle buffer."""
    shards = tfds.even_splits(split, n=process_count)
    sizes = [_split_size(builder, shard, "train_split", config) for shard in shards]
    shard_size = sizes[process_index]
    if shard_size == 0:
        raise ValueError(
            f"config.dataset.train_split={split!r} leaves no examples for process {process_index} of {process_count}"
        )
    first_index = sum(sizes[:process_index])  # Indices count within the whole split, across processes.
    base = _read(builder, shards[process_index]).enumerate(start=first_index)
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
    return tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).skip(skip)


# ---------------------------------------------------------------------------------------------- eval


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


def make_eval_iterator(config, *, global_batch_size: int, rows) -> EvalBatches:
    """One pass over config.dataset.eval_split in order: this process's `rows` of each global batch.

    Yields {"image": uint8 (R, S, S, 3), "label": int32 (R,), "mask": bool (R,)}, every batch full
    size. Across processes each example appears exactly once with mask True; padding rows (zero image,
    label 0) have mask False. Every process yields the same number of batches, so per-batch
    collectives in a multi-host eval line up. Transform: `preprocess.central_crop(image_size, crop_pct)`.
    """
    start, stop = _check_rows(global_batch_size, rows)
    _check_input(config)
    builder, source, features, channels = _open(config, "eval_split")
    eval_fn = _eval_fn(config, channels)
    size = int(config.input.image_size)
    padding = {
        "image": tf.zeros([size, size, 3], tf.uint8),
        "label": tf.constant(0, tf.int32),
        "mask": tf.constant(False),
    }
    split = config.dataset.eval_split
    if source is None:
        return _stream_eval(
            builder,
            config,
            eval_fn,
            padding,
            split,
            start // (stop - start),
            global_batch_size // (stop - start),
            stop - start,
        )
    records = _Records(source, features, channels, bool(_cfg(config.dataset, "cache", False)))
    num_batches = math.ceil(records.size / global_batch_size)
    offsets = np.arange(start, stop, dtype=np.int64)

    def positions():
        for k in range(num_batches):
            p = k * global_batch_size + offsets
            yield np.where(p < records.size, p, 0), (p < records.size).astype(np.int64)

    def row(r):  # "extra" is the mask; padding rows read example 0 (at most a batch of them), then blanked
        return tf.cond(r["extra"] > 0, lambda: eval_fn(records.example(r)), lambda: padding)

    ds = records.rows(positions, stop - start).map(row, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(stop - start, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return EvalBatches(iter(ds.as_numpy_iterator()), num_batches)


def _stream_eval(builder, config, eval_fn, padding, split, process_index, process_count, local_batch_size):
    """The fallback for tfrecord-only datasets: this process's shard in file order, padded."""
    shards = tfds.even_splits(split, n=process_count)
    sizes = [_split_size(builder, shard, "eval_split", config) for shard in shards]
    num_batches = math.ceil(max(sizes) / local_batch_size)
    ds = _read(builder, shards[process_index]).map(eval_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    num_padding = num_batches * local_batch_size - sizes[process_index]
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
    ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return EvalBatches(iter(ds.as_numpy_iterator()), num_batches)
