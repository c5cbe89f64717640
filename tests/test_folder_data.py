"""Image folders as datasets (`config.dataset.name = "folder:DIR"`): layouts, the stratified split, the
global order on any process count, resume, eval coverage, bad input, and the command line end to end.

The folders are written offline with PIL. Every image is one flat grey level, unique in its folder, so
a batch row tells which file it came from whatever the crop, resize or format (grey, RGB, RGBA,
palette; PNG, JPEG, GIF, BMP, WebP).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from test_data import make_config as digits_style_config  # noqa: E402

from inception_jax.trainer import validation  # noqa: E402
from inception_jax.trainer.config import base_config  # noqa: E402
from inception_jax.trainer.data import folder, pipeline  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CLASSES = ("ant", "bee", "cat")
# (extension, PIL mode): upper-case extensions count too; grey, alpha and palette images come out RGB.
FORMATS = [
    ("png", "L"),
    ("jpg", "RGB"),
    ("png", "RGBA"),
    ("gif", "L"),
    ("bmp", "RGB"),
    ("png", "LA"),
    ("JPEG", "L"),
    ("png", "P"),
    ("webp", "RGB"),
]
STEP = 7  # grey levels 5, 12, 19, ...: far enough apart for JPEG's rounding


def _write_image(path, level: int, k: int) -> None:
    from PIL import Image

    ext, mode = FORMATS[k % len(FORMATS)]
    image = Image.fromarray(np.full((12 + k % 5, 16 + k % 7), level, np.uint8))
    image = image.convert(mode, palette=Image.Palette.ADAPTIVE) if mode == "P" else image.convert(mode)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    options = {"jpg": {"quality": 95}, "jpeg": {"quality": 95}, "webp": {"lossless": True}}.get(ext.lower(), {})
    image.save(f"{path}.{ext}", **options)


def _write_classes(directory, counts, first_level: int = 5) -> dict[str, int]:
    """counts[i] images in directory/CLASSES[i]/; returns {relative path without extension: grey level}."""
    levels, k = {}, 0
    for name, count in zip(CLASSES, counts):
        for j in range(count):
            level = first_level + STEP * k
            _write_image(os.path.join(directory, name, f"img{j:02d}"), level, k)
            levels[f"{name}/img{j:02d}"] = level
            k += 1
    return levels


def _junk(directory) -> None:
    """Files and folders the scan must ignore: not images, hidden, a Jupyter checkpoint folder."""
    for rel in ("ant/notes.txt", "README.md", "bee/labels.csv"):
        with open(os.path.join(directory, rel), "w") as f:
            f.write("not an image\n")
    for rel in ("ant/.hidden", ".ipynb_checkpoints/img", "bee/.thumbs/img"):
        _write_image(os.path.join(directory, rel), 255, 0)


@pytest.fixture(scope="module", autouse=True)
def scan_cache(tmp_path_factory):
    """The scan's cache files go to a temporary folder, not the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("scan_cache")
        mp.setenv(folder.CACHE_ENV, str(cache))
        yield cache


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """One folder, DIR/<class>/ (9, 12 and 15 images, one of them in a subfolder), split by val_fraction."""
    root = tmp_path_factory.mktemp("one")
    levels = _write_classes(root, (9, 12, 15))
    os.makedirs(root / "cat" / "sub")
    nested = next((root / "cat").glob("img14.*"))
    os.replace(nested, root / "cat" / "sub" / nested.name)
    _junk(root)
    return root, levels


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """DIR/train/<class>/ (4, 5, 6 images) with DIR/validation/<class>/ (2, 3, 1) and DIR/test/ant/ (2)."""
    root = tmp_path_factory.mktemp("two")
    train = _write_classes(root / "train", (4, 5, 6))
    val = _write_classes(root / "validation", (2, 3, 1), first_level=5 + STEP * 15)
    test = _write_classes(root / "test", (2,), first_level=5 + STEP * 21)
    _junk(root / "train")
    return root, train, val, test


def make_config(root, **dataset) -> ml_collections.ConfigDict:
    """test_data's 16-pixel input config, reading the folder `root`."""
    c = digits_style_config(name=f"folder:{root}")
    c.dataset.update({"eval_split": "validation", "shuffle_buffer": 10_000, **dataset})  # the pipeline default
    return c


def _levels_of(images: np.ndarray, known: list[int]) -> list[int]:
    """The grey level each (flat) image was written with: the nearest known level to its mean."""
    known = np.asarray(sorted(known))
    return [int(known[np.argmin(np.abs(known - image.mean()))]) for image in images]


# ---------------------------------------------------------------------------------------------- layouts


def test_classes_and_split_sizes_of_both_layouts(one, two):
    root, levels = one
    info = pipeline.dataset_info(make_config(root))
    assert info.label_names == CLASSES and info.num_classes == 3
    assert info.random_access and info.image_shape == (None, None, 3)
    # 36 images (the nested one included): round(9 x 0.1) = 1, round(12 x 0.1) = 1, round(15 x 0.1) = 2 held out.
    assert (info.num_train_examples, info.num_eval_examples) == (32, 4)

    root, train, val, test = two
    config = make_config(root)
    info = pipeline.dataset_info(config)
    assert info.label_names == CLASSES
    assert (info.num_train_examples, info.num_eval_examples) == (15, 6)
    data = pipeline._folder(config)
    assert len(data.split("val", "eval_split")) == 6 and len(data.split("test", "eval_split")) == 2
    assert data.split("train", "train_split").labels == [0] * 4 + [1] * 5 + [2] * 6
    # Without DIR/test, "test" is the validation split (configs that evaluate on "test" keep working).
    assert len(pipeline._folder(make_config(one[0])).split("test", "eval_split")) == 4
    with pytest.raises(folder.FolderError, match=r"config.dataset.eval_split='test\[:10%\]' is not a split"):
        pipeline.dataset_info(make_config(root, eval_split="test[:10%]"))


def test_stratified_split_is_seeded_disjoint_and_complete(one):
    root, levels = one
    name = f"folder:{root}"
    all_files = set(levels)

    def parts(**options):
        data = folder.scan(name, **options)
        return [
            [os.path.splitext(os.path.relpath(p, root))[0].replace("sub/", "") for p in data.splits[k].paths]
            for k in ("train", "validation")
        ], data

    (train, val), data = parts()
    assert [train, val] == parts()[0]  # the file list and the seed decide it, nothing else
    assert not set(train) & set(val) and set(train) | set(val) == all_files
    held = data.splits["validation"].labels
    assert [held.count(i) for i in range(3)] == [1, 1, 2]  # every class in both parts
    assert parts(split_seed=1)[0][1] != val
    (train, val), data = parts(val_fraction=0.5)
    assert [data.splits["validation"].labels.count(i) for i in range(3)] == [4, 6, 8]  # round half to even


# ---------------------------------------------------------------------------------------------- order


def test_train_batches_are_the_same_on_one_or_two_processes_and_resume_exactly(one):
    """As for TFDS datasets: one process feeding all 8 rows or two feeding 4 each, the same batches bit
    for bit; a run resumed at step 4 continues with them. 6 batches of 8 cross the 32-image epoch."""
    root, levels = one
    config = make_config(root)
    whole = pipeline.make_train_iterator(config, global_batch_size=8, rows=(0, 8))
    batches = [next(whole) for _ in range(6)]
    assert batches[0]["image"].shape == (8, 16, 16, 3) and batches[0]["image"].dtype == np.uint8
    halves = [pipeline.make_train_iterator(config, global_batch_size=8, rows=r) for r in ((0, 4), (4, 8))]
    for expected in batches:
        got = [next(h) for h in halves]
        np.testing.assert_array_equal(np.concatenate([g["image"] for g in got]), expected["image"])
        np.testing.assert_array_equal(np.concatenate([g["label"] for g in got]), expected["label"])
    resumed = pipeline.make_train_iterator(config, global_batch_size=8, rows=(4, 8), start_step=4)
    for expected in batches[4:]:
        np.testing.assert_array_equal(next(resumed)["image"], expected["image"][4:])
    labels = np.concatenate([b["label"] for b in batches])
    train_labels = pipeline._folder(config).split("train", "train_split").labels
    np.testing.assert_array_equal(np.bincount(labels[:32], minlength=3), np.bincount(train_labels, minlength=3))


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_example_once_and_decodes_every_format_to_rgb(two, process_count):
    root, train, val, test = two
    config = make_config(root)
    rows = []
    for p in range(process_count):  # 4 rows per process: 6 examples in 2 or 1 global batches
        batches = pipeline.make_eval_iterator(config, global_batch_size=4 * process_count, rows=(4 * p, 4 * p + 4))
        assert len(batches) == {1: 2, 2: 1}[process_count]
        rows += list(batches)
    images = np.concatenate([b["image"] for b in rows])
    mask = np.concatenate([b["mask"] for b in rows])
    labels = np.concatenate([b["label"] for b in rows])
    assert mask.sum() == 6 and np.all(images[~mask] == 0) and np.all(labels[~mask] == 0)
    seen = images[mask].astype(np.int32)
    assert np.all(seen == seen[..., :1])  # grey, RGBA, palette: three equal channels
    assert sorted(_levels_of(seen, list(val.values()))) == sorted(val.values())  # each file once
    assert np.all(np.abs(seen - np.asarray(_levels_of(seen, list(val.values())))[:, None, None, None]) <= 2)
    assert sorted(labels[mask].tolist()) == [0, 0, 1, 1, 1, 2]


# ---------------------------------------------------------------------------------------------- bad input


def _broken_jpeg(path) -> None:
    _write_image(str(path)[: -len(".jpg")], 100, 1)  # FORMATS[1]: a JPEG
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # truncated


def _two_classes(root, counts=(2, 2)):
    _write_classes(root, counts)


def _case_missing(root):
    return root / "nope"


def _case_no_classes(root):
    for k in range(2):
        _write_image(str(root / f"loose{k}"), 10, 0)


def _case_one_class(root):
    _write_classes(root, (3,))


def _case_empty_class(root):
    _two_classes(root, (2, 0, 2))
    os.makedirs(root / "bee")
    (root / "bee" / "notes.txt").write_text("no images here\n")


def _case_corrupt_jpeg(root):
    _two_classes(root)
    _broken_jpeg(root / "bee" / "broken.jpg")


def _case_text_as_jpeg(root):
    _two_classes(root)
    (root / "bee" / "text.jpg").write_text("this is not a JPEG\n")


def _case_unknown_val_class(root):
    _two_classes(root / "train")
    _write_classes(root / "val", (1, 1, 1))


def _case_val_and_validation(root):
    _two_classes(root / "train")
    _two_classes(root / "val")
    _two_classes(root / "validation")


BAD_FOLDERS = [
    ("missing", _case_missing, r"nope does not exist; give the folder that holds one subfolder of images per class"),
    ("no classes", _case_no_classes, r"has no class folders, and 2 image\(s\) directly in .*at least 2 classes"),
    ("one class", _case_one_class, r"has only one class folder, 'ant'; a classifier needs at least 2 classes"),
    ("empty class", _case_empty_class, r"1 of 3 class folders of .* hold no images .*: 'bee'; add images"),
    ("corrupt jpeg", _case_corrupt_jpeg, r"1 of 5 images .* cannot be decoded: bee/broken.jpg \(.*\); fix or delete"),
    ("text as jpeg", _case_text_as_jpeg, r"cannot be decoded: bee/text.jpg \(Unknown image file format.*skip_bad"),
    ("unknown val class", _case_unknown_val_class, r"val has class folders that .*train lacks: 'cat'"),
    ("val and validation", _case_val_and_validation, r"has both val/ and validation/"),
]


@pytest.mark.parametrize("case, make, message", BAD_FOLDERS, ids=[c[0] for c in BAD_FOLDERS])
def test_bad_folders_are_one_line_errors_naming_the_field_the_files_and_the_fix(case, make, message, tmp_path):
    root = make(tmp_path) or tmp_path
    with pytest.raises(folder.FolderError) as err:  # a ValueError: the trainer's ConfigError, exit 2
        pipeline.dataset_info(make_config(root))
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"config.dataset.name='folder:{root}'")
    assert re.search(message, text), text


def test_val_fraction_is_checked_with_the_config():
    c = base_config()
    c.total_steps = 1
    c.dataset.val_fraction = 1.0
    with pytest.raises(validation.ConfigError, match=r"config.dataset.val_fraction=1.0 must be in \(0, 1\)"):
        validation.validated(c)


def test_a_resumed_run_must_find_the_classes_it_started_with(tmp_path):
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    (tmp_path / "config.json").write_text(json.dumps({"dataset": {"label_names": ["ant", "bee"]}}))
    c = base_config()
    c.dataset.name = "folder:/data/pets"
    validation.check_classes(c, str(tmp_path), ("ant", "bee"))
    with pytest.raises(validation.ConfigError, match=r"classes changed since .* \(added \['cat'\], removed \[\]\)"):
        validation.check_classes(c, str(tmp_path), ("ant", "bee", "cat"))


def test_skip_bad_images_leaves_them_out_reports_the_count_and_trains_through(tmp_path, caplog):
    _write_classes(tmp_path, (3, 3, 3))
    _broken_jpeg(tmp_path / "ant" / "broken.jpg")
    (tmp_path / "cat" / "text.png").write_text("not a PNG\n")
    config = make_config(tmp_path, skip_bad_images=True, val_fraction=0.34)
    info = pipeline.dataset_info(config)
    assert "left out 2 of 11 images that cannot be decoded: ant/broken.jpg" in caplog.text
    assert info.num_train_examples + info.num_eval_examples == 9 and info.num_eval_examples >= 2
    stream = pipeline.make_train_iterator(config, global_batch_size=4, rows=(0, 4))
    assert sum(len(next(stream)["label"]) for _ in range(4)) == 16  # past an epoch, nothing fails


def test_the_scan_decodes_each_file_once_and_again_when_it_changes(tmp_path, monkeypatch):
    _write_classes(tmp_path, (2, 2))
    name = f"folder:{tmp_path}"
    folder.scan(name)
    assert os.path.exists(folder._cache_file(str(tmp_path)))
    decoded = []
    real = folder._decode_error
    monkeypatch.setattr(folder, "_decode_error", lambda path: decoded.append(path) or real(path))
    monkeypatch.setattr(folder, "_VERDICTS", {})  # a new process: only the cache file remembers
    folder.scan(name)
    assert decoded == []
    (tmp_path / "ant" / "img01.jpg").write_bytes(b"now broken")
    with pytest.raises(folder.FolderError, match="ant/img01.jpg"):
        folder.scan(name)
    assert decoded == [str(tmp_path / "ant" / "img01.jpg")]


# ---------------------------------------------------------------------------------------------- command line


def _flags(workdir, root, *extra) -> list[str]:
    return [
        f"--config={os.path.join(REPO, 'configs', 'digits.py')}",
        f"--workdir={workdir}",
        f"--config.dataset.name=folder:{root}",  # digits' eval_split "test": the validation split here
        "--config.total_steps=2",
        "--config.num_epochs=0.0",
        "--config.batch_size=4",
        "--config.eval_batch_size=4",
        "--config.model.width_multiplier=0.0625",  # the smallest GoogLeNet that compiles in seconds
        "--config.input.image_size=16",
        "--config.schedule.warmup_epochs=0.0",
        "--config.checkpoint_every_steps=2",
        "--config.progress_bar=False",
        *extra,
    ]


@pytest.mark.slow
def test_cli_trains_on_a_folder_and_records_its_class_names(tmp_path):
    """The one compile of this file: `inception-train` in its own process, two steps and an eval."""
    root = tmp_path / "pets"
    _write_classes(root, (3, 3, 3))
    _broken_jpeg(root / "bee" / "broken.jpg")
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # one CPU device, conftest's compile level
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    proc = subprocess.run(
        [sys.executable, "-m", "inception_jax.trainer.main", *_flags(tmp_path / "run", root)]
        + ["--config.dataset.skip_bad_images=True"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "left out 1 of 10 images that cannot be decoded: bee/broken.jpg" in proc.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["dataset"]["label_names"] == list(CLASSES)
    final = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    held_out = folder.scan(f"folder:{root}", skip_bad_images=True).splits["validation"]
    assert final["step"] == 2 and final["eval/examples"] == len(held_out)


def test_cli_bad_folder_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capfd):
    """`inception-train`'s flag parsing and main in this process (as tests/test_reliability.py runs
    them); capfd sees what TensorFlow's C++ code would print too."""
    from inception_jax.trainer import main as main_lib

    root = tmp_path / "pets"
    _write_classes(root, (3,))
    argv = ["inception_jax.trainer.main", *_flags(tmp_path / "run", root)]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the --config.* overrides from sys.argv
    try:
        status = main_lib.main(main_lib.parse_flags(argv))
    finally:  # forget this call's flags: config_flags defines one flag per --config.* override
        main_lib.FLAGS.unparse_flags()
        for name in [n for n in main_lib.FLAGS if n.startswith("config.")]:
            delattr(main_lib.FLAGS, name)
    assert status == 2
    assert capfd.readouterr().err.splitlines() == [
        f"error: config.dataset.name='folder:{root}': {root} has only one class folder, 'ant'; a classifier "
        f"needs at least 2 classes, one folder of images each ({root}/<class>/*.jpg), or DIR/train/<class>/ "
        "with DIR/val/<class>/."
    ]
    assert not (tmp_path / "run").exists() or os.listdir(tmp_path / "run") == []
