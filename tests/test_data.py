"""Input pipeline tests: the offline digits builder, preprocessing ops, the global order, train/eval
iterators over the rows of a global batch.

Everything runs offline: digits and a ten-example dataset are built into tmp dirs, cifar10 and
imagenet2012 come from `tfds.testing.mock_data`.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from inception_jax.trainer.data import digits, pipeline, preprocess  # noqa: E402


def make_config(name="digits", data_dir=None, **input_overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = ml_collections.ConfigDict(
        dict(name=name, data_dir=data_dir, train_split="train", eval_split="test", shuffle_buffer=256, cache=False)
    )
    c.input = ml_collections.ConfigDict(
        dict(
            image_size=16,
            crop_pct=0.875,
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            interpolation="bilinear",
            train_augment="inception_crop",
            color_distortion=False,
        )
    )
    c.input.update(input_overrides)
    return c


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_digits"))
    digits.ensure_prepared(data_dir)
    return data_dir


# ---------------------------------------------------------------------------------------------- digits


def test_digits_builds_offline_with_documented_splits(digits_dir):
    start = time.perf_counter()
    builder = digits.ensure_prepared(digits_dir)  # Already built: must only read the metadata.
    assert time.perf_counter() - start < 1.0
    assert builder.is_prepared()
    assert builder.info.features["label"].num_classes == 10
    assert builder.info.splits["train"].num_examples == digits.NUM_TRAIN == 1500
    assert builder.info.splits["test"].num_examples == digits.NUM_TEST == 297

    test = builder.as_data_source(split="test")  # array_record: random access by index
    labels = np.array([int(test[i]["label"]) for i in range(len(test))])
    assert set(np.bincount(labels, minlength=10)) <= {29, 30}  # Stratified: every class has its share.
    image = test[0]["image"]
    assert image.shape == (8, 8, 1) and image.dtype == np.uint8 and image.max() == 255

    info = pipeline.dataset_info(make_config(data_dir=digits_dir))
    assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (10, 1500, 297)
    assert info.random_access


def test_digits_split_is_a_fixed_partition():
    a, b = digits.split_indices(), digits.split_indices()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert len(np.intersect1d(a["train"], a["test"])) == 0
    assert np.array_equal(np.union1d(a["train"], a["test"]), np.arange(1797))


# ---------------------------------------------------------------------------------------------- ops


def _seed(i: int) -> tf.Tensor:
    return tf.constant([i, 7], tf.int64)


def _random_image(h, w, c=3, seed=0):
    return tf.constant(np.random.RandomState(seed).randint(0, 256, (h, w, c)).astype(np.uint8))


def test_crop_window_respects_area_and_aspect_ranges():
    for i in range(30):
        top, left, h, w = preprocess.crop_window(tf.constant([120, 160, 3]), _seed(i)).numpy()
        assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 160
        assert 0.08 * 0.9 <= h * w / (120 * 160) <= 1.0  # Rounding to whole pixels bends the bounds a bit.
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_crop_window_falls_back_to_a_central_crop_in_the_aspect_range():
    # 10x200: no crop with aspect <= 4/3 reaches 8% of the area, so every attempt fails.
    window = preprocess.crop_window(tf.constant([10, 200, 3]), _seed(0)).numpy()
    assert window.tolist() == [0, (200 - 13) // 2, 10, 13]  # 13 = round(10 * 4/3), centred.


def test_inception_crop_shape_and_range():
    image = _random_image(50, 70)
    for interpolation in ("bilinear", "bicubic", "nearest"):
        out = preprocess.inception_crop(image, _seed(1), 24, interpolation=interpolation)
        assert out.shape == (24, 24, 3) and out.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255.0
    gray = preprocess.inception_crop(_random_image(8, 8, 1), _seed(1), 32)
    assert gray.shape == (32, 32, 1)
    with pytest.raises(ValueError, match="interpolation"):
        preprocess.inception_crop(image, _seed(1), 24, interpolation="lanczos")


@pytest.mark.parametrize("chroma_downsampling", [False, True])
def test_jpeg_crop_during_decode_matches_decode_then_crop(chroma_downsampling):
    encoded = tf.io.encode_jpeg(_random_image(60, 90), chroma_downsampling=chroma_downsampling)
    decoded = preprocess.decode(encoded, 3)
    for i in range(5):
        fast = preprocess.decode_and_inception_crop(encoded, _seed(i), 20, channels=3).numpy()
        slow = preprocess.inception_crop(decoded, _seed(i), 20).numpy()
        if not chroma_downsampling:
            np.testing.assert_array_equal(fast, slow)
        else:  # 4:2:0: libjpeg's chroma upsampling differs along the window's edge only.
            assert np.mean(fast != slow) <= 0.1 and np.mean(np.abs(fast - slow)) < 1.0


def test_central_crop_shapes_values_and_geometry():
    assert preprocess.central_crop(_random_image(8, 8, 1), 32, 0.875).shape == (32, 32, 1)
    constant = tf.fill([60, 80, 3], tf.constant(100, tf.uint8))
    np.testing.assert_allclose(preprocess.central_crop(constant, 32, 0.875).numpy(), 100.0, atol=1e-3)
    # crop_pct 1: shorter side 60 -> 32, longer 80 -> int(32 * 80 / 60) = 42, centre offset round(10/2) = 5.
    image = _random_image(60, 80)
    expected = preprocess.resize(image, [32, 42])[:, 5:37, :]
    np.testing.assert_array_equal(preprocess.central_crop(image, 32, 1.0).numpy(), expected.numpy())
    # crop_pct 0.875: resize to floor(32 / 0.875) = 36 (square image), crop offset 2.
    square = _random_image(50, 50)
    expected = preprocess.resize(square, [36, 36])[2:34, 2:34, :]
    np.testing.assert_array_equal(preprocess.central_crop(square, 32, 0.875).numpy(), expected.numpy())


def test_augmentations_are_deterministic_given_the_seed():
    image = _random_image(40, 40)
    for op in (
        lambda s: preprocess.inception_crop(image, s, 16),
        lambda s: preprocess.random_flip(image, s),
        lambda s: preprocess.resize_flip(image, s, 16),
        lambda s: preprocess.color_distortion(tf.cast(image, tf.float32) / 255.0, s),
    ):
        outs = [op(_seed(i)).numpy() for i in range(8)]
        again = [op(_seed(i)).numpy() for i in range(8)]
        assert all(np.array_equal(a, b) for a, b in zip(outs, again))
        assert any(not np.array_equal(outs[0], o) for o in outs[1:])  # ... and the seed matters.
    flips = {
        bool(np.array_equal(preprocess.random_flip(image, _seed(i)).numpy(), image.numpy()[:, ::-1])) for i in range(16)
    }
    assert flips == {True, False}


def test_color_distortion_range_and_rgb_normalize():
    out = preprocess.color_distortion(tf.random.stateless_uniform([16, 16, 3], _seed(0)), _seed(3))
    assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0
    rgb = preprocess.to_rgb(tf.zeros([4, 4, 1]))
    assert rgb.shape == (4, 4, 3)
    normed = preprocess.normalize(tf.fill([2, 2, 3], 255.0), (0.5, 0.4, 0.3), (0.5, 0.2, 0.7))
    np.testing.assert_allclose(normed.numpy()[0, 0], [1.0, 3.0, 1.0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------- train


def test_global_order_is_a_permutation_per_epoch_and_independent_of_the_row_split():
    whole = pipeline.global_order(10, seed=3, global_batch_size=4, rows=(0, 4))
    indices, epochs = zip(*[next(whole) for _ in range(10)])  # 40 positions: 4 epochs of 10
    indices, epochs = np.concatenate(indices), np.concatenate(epochs)
    assert epochs.tolist() == [p // 10 for p in range(40)]
    for e in range(4):
        assert sorted(indices[epochs == e]) == list(range(10))  # every example once per epoch
    assert not np.array_equal(indices[:10], indices[10:20])  # ... in a new order each epoch
    halves = [pipeline.global_order(10, 3, 4, rows) for rows in ((0, 2), (2, 4))]
    split = np.concatenate([np.concatenate([next(h)[0] for h in halves]) for _ in range(10)])
    np.testing.assert_array_equal(split, indices)
    resumed = pipeline.global_order(10, 3, 4, (0, 4), start_step=7)
    np.testing.assert_array_equal(next(resumed)[0], indices[28:32])


@pytest.mark.parametrize("cache", [False, True])
def test_train_batches_are_the_same_for_any_row_split_and_resume_exactly(digits_dir, cache):
    """One process feeding all 32 rows, or four feeding 8 each: the same global batches, bit for bit.
    The first 100 training examples (TFDS split slicing) make every fourth batch cross an epoch."""
    config = make_config(data_dir=digits_dir, color_distortion=True)
    config.dataset.cache = cache
    config.dataset.train_split = "train[:100]"
    stream = pipeline.make_train_iterator(config, global_batch_size=32, rows=(0, 32))
    batches = [next(stream) for _ in range(8)]  # 256 examples: epochs 0, 1 and part of 2
    first = batches[0]
    # uint8 pixels: normalised on the device (train.normalise_images), a quarter of float32's bytes.
    assert first["image"].shape == (32, 16, 16, 3) and first["image"].dtype == np.uint8
    assert first["label"].shape == (32,) and first["label"].dtype == np.int32
    assert int(first["image"].max()) - int(first["image"].min()) > 200  # pixels, not normalised values
    quarters = [pipeline.make_train_iterator(config, global_batch_size=32, rows=(8 * p, 8 * p + 8)) for p in range(4)]
    for expected in batches[:4]:
        got = np.concatenate([next(q)["image"] for q in quarters])
        np.testing.assert_array_equal(got, expected["image"])
    resumed = pipeline.make_train_iterator(config, global_batch_size=32, rows=(8, 16), start_step=6)
    for expected in batches[6:]:  # batch 6 spans epochs 1 and 2
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], expected["image"][8:16])
        np.testing.assert_array_equal(got["label"], expected["label"][8:16])
    labels = np.concatenate([b["label"] for b in batches])
    source = digits.Digits(data_dir=digits_dir).as_data_source("train[:100]")
    expected_counts = np.bincount([int(source[i]["label"]) for i in range(100)], minlength=10)
    for epoch in (0, 1):  # each epoch holds every training example once, in a new order
        np.testing.assert_array_equal(
            np.bincount(labels[100 * epoch : 100 * epoch + 100], minlength=10), expected_counts
        )
    assert not np.array_equal(labels[:100], labels[100:200])


@pytest.mark.parametrize("name", ["cifar10", "imagenet2012"])
@pytest.mark.parametrize("augment", ["inception_crop", "resize_flip", "none"])
def test_train_iterator_shapes_under_mock_data(name, augment):
    config = make_config(name=name, image_size=24, train_augment=augment, interpolation="bicubic")
    config.dataset.eval_split = "validation" if name == "imagenet2012" else "test"
    with tfds.testing.mock_data(num_examples=9):
        info = pipeline.dataset_info(config)
        stream = pipeline.make_train_iterator(config, global_batch_size=4, rows=(0, 4))
        batches = [next(stream) for _ in range(3)]  # Runs past the 9 mock examples: the stream repeats.
    assert info.num_classes == (10 if name == "cifar10" else 1000)
    for batch in batches:
        assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].dtype == np.uint8
        assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
        assert np.all((0 <= batch["label"]) & (batch["label"] < info.num_classes))


# ---------------------------------------------------------------------------------------------- eval


with tfds.core.registered.skip_registration():  # Not registered: the pipeline finds it by its files.

    class TenExamples(tfds.core.GeneratorBasedBuilder):
        """Ten examples whose labels 0..9 identify them."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(  # Not dataset_info_from_configs: tests/ is no package.
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(4, 4, 1), dtype=np.uint8),
                        "label": tfds.features.ClassLabel(num_classes=10),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"test": self._generate_examples()}

        def _generate_examples(self):
            for i in range(10):
                yield i, {"image": np.full((4, 4, 1), 20 * i, np.uint8), "label": i}


@pytest.fixture(scope="module", params=["array_record", "tfrecord"])
def ten_dir(tmp_path_factory, request):
    """The ten examples stored with random access (the global order) and without (per-process shards)."""
    data_dir = str(tmp_path_factory.mktemp(f"tfds_ten_{request.param}"))
    TenExamples(data_dir=data_dir).download_and_prepare(
        file_format=request.param, download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return data_dir


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_covers_a_ragged_split_exactly_once(ten_dir, process_count):
    config = make_config(name="ten_examples", data_dir=ten_dir)
    per_process = []
    for p in range(process_count):  # 4 rows per process
        batches = pipeline.make_eval_iterator(config, global_batch_size=4 * process_count, rows=(4 * p, 4 * p + 4))
        per_process.append(list(batches))
        assert len(batches) == len(per_process[0])
    assert len({len(b) for b in per_process}) == 1  # Same batch count everywhere: no multi-host deadlock.
    assert len(per_process[0]) == {1: 3, 2: 2, 3: 1}[process_count]  # ceil(10 / global batch)
    labels = []
    for batches in per_process:
        for batch in batches:
            assert batch["image"].shape == (4, 16, 16, 3) and batch["mask"].dtype == np.bool_
            assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
            labels.extend(batch["label"][batch["mask"]].tolist())
            assert np.all(batch["image"][~batch["mask"]] == 0) and np.all(batch["label"][~batch["mask"]] == 0)
    assert sorted(labels) == list(range(10))  # Every example exactly once.


def test_a_dataset_without_random_access_still_trains_per_process(ten_dir, caplog):
    config = make_config(name="ten_examples", data_dir=ten_dir, train_augment="none")
    config.dataset.train_split = "test"
    info = pipeline.dataset_info(config)
    streams = [pipeline.make_train_iterator(config, global_batch_size=4, rows=(2 * p, 2 * p + 2)) for p in (0, 1)]
    seen = np.concatenate([next(s)["label"] for _ in range(5) for s in streams])  # 20 rows: 2 epochs of 10
    assert sorted(seen) == sorted(list(range(10)) * 2)
    assert info.random_access == ("array_record" in ten_dir)
    assert ("convert it once: tfds convert_format" in caplog.text) == (not info.random_access)


# ---------------------------------------------------------------------------------------------- errors


def test_tensorflow_sees_no_gpu():
    assert tf.config.get_visible_devices("GPU") == []


def test_unknown_dataset_fails_fast_with_close_matches():
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        pipeline.dataset_info(make_config(name="cifar_10"))
    assert time.perf_counter() - start < 5.0
    message = str(err.value)
    assert "config.dataset.name='cifar_10'" in message and "'cifar10'" in message


def test_unprepared_dataset_fails_fast_with_build_command(tmp_path):
    data_dir = str(tmp_path / "empty")
    start = time.perf_counter()
    with pytest.raises(pipeline.DatasetNotPreparedError) as err:
        pipeline.dataset_info(make_config(name="cifar10", data_dir=data_dir))
    with pytest.raises(pipeline.DatasetNotPreparedError):
        pipeline.make_train_iterator(make_config(name="cifar10", data_dir=data_dir), global_batch_size=2, rows=(0, 2))
    with pytest.raises(pipeline.DatasetNotPreparedError) as manual:
        pipeline.make_eval_iterator(
            make_config(name="imagenet2012", data_dir=data_dir), global_batch_size=2, rows=(0, 2)
        )
    assert time.perf_counter() - start < 5.0
    assert f"tfds build cifar10 --file_format=array_record --data_dir={data_dir}" in str(err.value)
    assert "--manual_dir=" in str(manual.value) and "ILSVRC2012_img_train.tar" in str(manual.value)


def test_bad_split_and_augment_names_are_config_errors(digits_dir):
    config = make_config(data_dir=digits_dir)
    config.dataset.eval_split = "validation"
    with pytest.raises(ValueError, match="config.dataset.eval_split='validation'"):
        pipeline.dataset_info(config)
    with pytest.raises(ValueError, match="train_augment"):
        pipeline.make_train_iterator(
            make_config(data_dir=digits_dir, train_augment="mixup"), global_batch_size=2, rows=(0, 2)
        )


def test_uint8_batches_are_normalised_on_the_device_as_the_host_formula():
    """`train.normalise_images` on uint8 equals `preprocess.normalize` on the same pixels, to float32
    rounding; float batches pass through untouched."""
    from inception_jax.trainer import train

    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    want = preprocess.normalize(tf.constant(pixels), mean, std).numpy()
    got = np.asarray(train.normalise_images(jnp.asarray(pixels), mean, std))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[0, 0, 0], (0 - np.array(mean)) / np.array(std), rtol=1e-6)
    floats = jnp.full((1, 2, 2, 3), 0.25)
    assert train.normalise_images(floats, mean, std) is floats


def test_prefetch_to_devices_keeps_order_and_reads_one_batch_ahead():
    from inception_jax.trainer import parallel

    mesh = parallel.make_mesh()
    read = []

    def batches():
        for i in range(3):
            read.append(i)
            yield {"image": np.full((8, 2, 2, 3), i, np.uint8), "label": np.full((8,), i, np.int32)}

    stream = parallel.prefetch_to_devices(batches(), mesh)
    first = next(stream)
    assert read == [0, 1]  # batch 1 is on its way while batch 0 is used
    assert isinstance(first["image"], jax.Array) and first["image"].sharding == parallel.data_sharding(mesh)
    assert [int(b["label"][0]) for b in [first, *stream]] == [0, 1, 2]
