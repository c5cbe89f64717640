"""`inception-evaluate`: every example once, numbers equal to a direct computation and to the trainer's
own final evaluation, TF-slim's background class, the PNG and JSON outputs, and bad input."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

import inception_jax  # noqa: E402
from inception_jax.preprocessing import EvalTransform  # noqa: E402
from inception_jax.tools import evaluate  # noqa: E402
from inception_jax.trainer import rundir, train  # noqa: E402
from inception_jax.trainer.config import base_config  # noqa: E402
from inception_jax.weights import read_class_names, save_variables  # noqa: E402

SIZE = 32
TRANSFORM = EvalTransform(SIZE, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
OPTIONS = {"width_multiplier": 0.0625, "aux_logits": False}
DIGITS_TEST = 297
CLASSES = ["flower", "sky", "temple"]  # _photo_folder's, sorted


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    from inception_jax.trainer.data import digits

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    digits.ensure_prepared(data_dir)
    return data_dir


def _weights(path, num_classes: int, seed: int = 0):
    model = inception_jax.create_model("googlenet", num_classes=num_classes, **OPTIONS)
    variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 3)))
    save_variables(
        path, variables, model="googlenet", options={"num_classes": num_classes, **OPTIONS}, preprocessing=TRANSFORM
    )
    return model, variables


def _direct(model, variables, data_dir, offset: int = 0):
    """Logits of every test image, computed without the tool: the trainer's eval batches, one jit."""
    from inception_jax.trainer.data import pipeline

    c = base_config()
    c.dataset.name, c.dataset.data_dir, c.dataset.eval_split = "digits", data_dir, "test"
    for k, v in TRANSFORM.config_fields().items():
        c.input[k] = v
    (batch,) = list(pipeline.make_eval_iterator(c, global_batch_size=304, rows=(0, 304)))
    x = train.normalise_images(jnp.asarray(batch["image"]), TRANSFORM.mean, TRANSFORM.std)
    logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False)[0])(variables, x), np.float64)
    mask = batch["mask"]
    return logits[mask][:, offset:], batch["label"][mask]


def _run_json(capsys, argv):
    assert evaluate.main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("outputs, offset", [(10, 0), (11, 1)], ids=["10-way", "1001-style background"])
def test_every_example_once_and_the_numbers_of_a_direct_computation(tmp_path, digits_dir, capsys, outputs, offset):
    model, variables = _weights(tmp_path / "w.msgpack", outputs)
    result = _run_json(
        capsys, ["--weights", str(tmp_path / "w.msgpack"), "--dataset", "digits", "--data-dir", digits_dir]
    )
    logits, labels = _direct(model, variables, digits_dir, offset)
    assert result["split"] == "test" and result["examples"] == len(labels) == DIGITS_TEST
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert result["top1"] == pytest.approx(np.mean(top5[:, 0] == labels), abs=1e-12)
    assert result["top5"] == pytest.approx(np.mean(np.any(top5 == labels[:, None], axis=1)), abs=1e-12)
    peak = logits.max(1, keepdims=True)
    log_probs = logits - peak - np.log(np.sum(np.exp(logits - peak), 1, keepdims=True))
    np.testing.assert_allclose(result["loss"], -np.mean(log_probs[np.arange(len(labels)), labels]), rtol=1e-5)
    confusion = np.array(result["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == DIGITS_TEST
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(labels, minlength=10))
    for i, row in enumerate(result["per_class"]):
        assert row["class"] == str(i) and row["examples"] == confusion[i].sum()
        assert row["top1"] == pytest.approx(confusion[i, i] / confusion[i].sum())


def test_output_folder_holds_the_json_and_the_confusion_png(tmp_path, digits_dir, capsys):
    _weights(tmp_path / "w.msgpack", 10)
    out = tmp_path / "out"
    argv = ["--weights", str(tmp_path / "w.msgpack"), "--dataset", "digits", "--data-dir", digits_dir]
    assert evaluate.main(argv + ["--output", str(out), "--no-progress", "--batch-size", "100"]) == 0
    table = capsys.readouterr().out
    saved = json.loads((out / "evaluation.json").read_text())
    assert f"top-1 {saved['top1']:.4f}  top-5 {saved['top5']:.4f}" in table
    assert saved["examples"] == DIGITS_TEST and len(saved["per_class"]) == 10
    png = (out / "confusion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


@pytest.mark.slow
def test_a_run_directory_evaluates_as_the_trainer_did(tmp_path, digits_dir, capsys):
    """--workdir: the newest checkpoint's EMA weights and the run's own config.input give the trainer's
    final evaluation."""
    c = base_config()
    c.model.name, c.model.width_multiplier, c.model.aux_logits = "googlenet", 0.0625, False
    c.dataset.name, c.dataset.data_dir, c.dataset.eval_split = "digits", digits_dir, "test"
    c.input.image_size = SIZE
    c.aux_loss_weights = ()
    c.batch_size, c.eval_batch_size, c.total_steps, c.num_epochs = 16, 64, 2, 0.0
    c.schedule.warmup_epochs = 0.0
    c.ema_decay = 0.5
    c.progress_bar = False
    train.train_and_evaluate(c, str(tmp_path / "run"))
    final = rundir.read_metrics(str(tmp_path / "run"))[-1]
    capsys.readouterr()
    result = _run_json(capsys, ["--workdir", str(tmp_path / "run"), "--dataset", "digits", "--data-dir", digits_dir])
    assert "EMA" in result["weights"] and result["examples"] == final["eval/examples"] == DIGITS_TEST
    assert result["top1"] == pytest.approx(final["eval/top1"], abs=1e-12)
    assert result["top5"] == pytest.approx(final["eval/top5"], abs=1e-12)
    assert result["loss"] == pytest.approx(final["eval/loss"], rel=1e-5)


def test_bad_input_is_one_line_and_exit_2(tmp_path, digits_dir, capsys):
    _weights(tmp_path / "seven.msgpack", 7)
    (tmp_path / "file").write_text("x")
    cases = {
        "does not exist": ["--weights", str(tmp_path / "missing.msgpack"), "--dataset", "digits"],
        "has 7 outputs but digits has 10 classes": [
            "--weights",
            str(tmp_path / "seven.msgpack"),
            "--dataset",
            "digits",
        ],
        "not a TFDS dataset": ["--weights", str(tmp_path / "seven.msgpack"), "--dataset", "no_such_dataset"],
        "is a file; name a folder": [
            "--weights",
            str(tmp_path / "seven.msgpack"),
            "--dataset",
            "digits",
            "--output",
            str(tmp_path / "file"),
        ],
        "not a training run's directory": ["--workdir", str(tmp_path), "--dataset", "digits"],
    }
    for expected, argv in cases.items():
        assert evaluate.main(argv + ["--data-dir", digits_dir]) == 2, expected
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err, err
    assert not os.path.exists(tmp_path / "file" / "evaluation.json")


def _photo_folder(root, per_class=6):
    """A one-folder layout of JPEG crops from scikit-learn's two offline sample photos, three classes:
    the temple and the sky of `china.jpg`, the flower of `flower.jpg`; crops of varied place and size."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images  # (427, 640, 3) each
    regions = {  # (photo, x0, y0, x1, y1)
        "flower": (flower, 100, 0, 385, 427),
        "sky": (china, 0, 0, 640, 90),
        "temple": (china, 120, 110, 480, 427),
    }
    rng = np.random.default_rng(0)
    for name, (photo, x0, y0, x1, y1) in regions.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            side = int(rng.integers(40, min(x1 - x0, y1 - y0) + 1))
            x, y = int(rng.integers(x0, x1 - side + 1)), int(rng.integers(y0, y1 - side + 1))
            crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((48, 40))
            crop.save(root / name / f"{i}.jpg", quality=90)
    return root


@pytest.mark.slow
def test_fine_tune_on_a_folder_then_evaluate_and_predict_with_its_class_names(tmp_path, capsys):
    """configs/finetune_folder.py from a weights file's recorded preprocessing; the run then evaluates and
    predicts by --workdir with the folder's class names."""
    from model_helpers import load_config

    from inception_jax.tools import export, model_source, predict
    from inception_jax.trainer import checkpoint

    data = _photo_folder(tmp_path / "photos")
    _weights(tmp_path / "w.msgpack", 10)
    c = load_config("finetune_folder", f"init_from={tmp_path / 'w.msgpack'},data={data},batch=8,blocks=1")
    assert c.input.image_size == SIZE and c.trainable == "last:1" and c.dataset.name == f"folder:{data}"
    c.num_epochs, c.total_steps, c.progress_bar = 0.0, 2, False
    train.train_and_evaluate(c, str(tmp_path / "run"))
    assert rundir.read_config(str(tmp_path / "run"))["dataset"]["label_names"] == CLASSES
    assert checkpoint.read_label_names(str(tmp_path / "run")) == tuple(CLASSES)  # the checkpoints too
    capsys.readouterr()

    run = ["--workdir", str(tmp_path / "run")]
    result = _run_json(capsys, run + ["--dataset", f"folder:{data}"])
    assert result["split"] == "validation" and result["examples"] == 3  # one of six per class held out
    assert [r["class"] for r in result["per_class"]] == CLASSES
    assert predict.main(run + [str(data / "sky"), "--json", "--top-k", "3"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert len(predicted["images"]) == 6
    for image in predicted["images"]:
        assert sorted(p["class"] for p in image["predictions"]) == CLASSES
        assert sum(p["probability"] for p in image["predictions"]) == pytest.approx(1.0, abs=1e-6)

    # Exported with its preprocessing built in, the run gives predict's probabilities on predict's pixels.
    out = str(tmp_path / "mine.stablehlo")
    assert export.main(run + ["--format", "stablehlo", "--with-preprocessing", "--platforms", "cpu", out]) == 0
    with open(out + ".json") as f:
        assert json.load(f)["class_names"] == CLASSES
    with open(out, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    files = [image["file"] for image in predicted["images"]]
    pixels = predict.load_images(files, EvalTransform.from_dict(predicted["preprocessing"]))
    probs = np.asarray(jax.nn.softmax(exported.call(pixels)))
    for image, row in zip(predicted["images"], probs):
        for p in image["predictions"]:
            assert row[CLASSES.index(p["class"])] == pytest.approx(p["probability"], abs=1e-5)

    # Written out as a variables file, the run predicts the same from the file alone, names included.
    weights = str(tmp_path / "mine.msgpack")
    assert export.main(run + ["--format", "msgpack", weights]) == 0
    assert "3 class names" in capsys.readouterr().err
    assert read_class_names(weights) == tuple(CLASSES)
    assert predict.main(["--weights", weights, str(data / "sky"), "--json", "--top-k", "3"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert from_file["preprocessing"] == predicted["preprocessing"]
    for a, b in zip(from_file["images"], predicted["images"]):
        assert [p["class"] for p in a["predictions"]] == [p["class"] for p in b["predictions"]]
        assert [p["probability"] for p in a["predictions"]] == pytest.approx(
            [p["probability"] for p in b["predictions"]], abs=1e-6
        )
    assert export.main(run + ["--format", "msgpack", "--with-preprocessing", str(tmp_path / "x.msgpack")]) == 2

    # A run whose config.json lost the names still has them from its checkpoints.
    saved = rundir.read_config(str(tmp_path / "run"))
    del saved["dataset"]["label_names"]
    with open(tmp_path / "run" / rundir.CONFIG_FILE, "w") as f:
        json.dump(saved, f)
    assert model_source.from_workdir(str(tmp_path / "run")).class_names == tuple(CLASSES)
