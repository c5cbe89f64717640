"""`inception-predict` and what it reads: recorded preprocessing and class names, `inception-convert`'s
defaults, the output formats, and bad input (one line on stderr, exit status 2).

The model is a randomly initialised GoogLeNet at width 0.125 with three classes and 48-pixel inputs, so
the single compile stays small; its probabilities are checked against a direct `model.apply` on the
same preprocessed pixels.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
tf = pytest.importorskip("tensorflow")
from PIL import Image  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402

from inception_jax import create_model, preprocessing  # noqa: E402
from inception_jax.preprocessing import EvalTransform  # noqa: E402
from inception_jax.tools import predict  # noqa: E402
from inception_jax.trainer.data import preprocess  # noqa: E402
from inception_jax.weights import read_class_names, read_preprocessing, save_variables  # noqa: E402

CLASSES = ("cat", "dog", "fish")
OPTIONS = {"width_multiplier": 0.125, "num_classes": 3}
TRANSFORM = EvalTransform(48, 0.875, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A weights file (recording TRANSFORM and CLASSES), one without records, two JPEGs and a folder."""
    root = tmp_path_factory.mktemp("predict")
    model = create_model("googlenet", **OPTIONS)
    variables = random_variables(model, (1, 48, 48, 3))
    save_variables(
        root / "tiny.msgpack",
        variables,
        model="googlenet",
        options=OPTIONS,
        preprocessing=TRANSFORM,
        class_names=CLASSES,
    )
    save_variables(root / "bare.msgpack", variables, model="googlenet", options=OPTIONS)
    china, flower = (Image.fromarray(a) for a in load_sample_images().images)
    china.resize((160, 107)).save(root / "china.jpg", quality=90)
    flower.crop((100, 0, 385, 427)).resize((90, 135)).save(root / "flower.jpg", quality=90)
    folder = root / "folder"
    (folder / "sub").mkdir(parents=True)
    china.crop((200, 50, 500, 350)).resize((64, 64)).save(folder / "b_square.png")
    flower.resize((200, 133)).save(folder / "sub" / "a_flower.JPEG", quality=85)
    (folder / "notes.txt").write_text("not an image, and ignored in a folder")
    (root / "text.jpg").write_text("a text file with an image's name")
    files = [root / "china.jpg", root / "flower.jpg", folder / "b_square.png", folder / "sub" / "a_flower.JPEG"]
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))  # one image at a time: one compile
    return {"root": root, "model": model, "variables": variables, "apply": apply, "files": [str(f) for f in files]}


def random_variables(model, shape) -> dict:
    """Seeded He-normal weights in the shapes `model.init` gives, without running it (an un-jitted init
    dispatches hundreds of small programs: slower than a compile)."""
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return np.ones(leaf.shape, leaf.dtype)
        if name in ("bias", "mean"):
            return (0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)

    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros(shape, np.float32), train=False))
    return jax.tree_util.tree_map_with_path(fill, shapes)


def reference_probabilities(tiny, files, transform=TRANSFORM) -> np.ndarray:
    """softmax(model.apply(...)) of each file through the eval transform, without the tool."""
    probs = []
    for f in files:
        pixels = preprocess.eval_transform(preprocess.decode(tf.io.read_file(f), 3), transform).numpy()
        x = preprocessing.normalize(pixels[None], transform.mean, transform.std)
        logits, _ = tiny["apply"](tiny["variables"], x)
        probs.append(jax.nn.softmax(np.asarray(logits[0], np.float64)))
    return np.stack(probs)


def run_main(argv, capsys) -> tuple[int, str, str]:
    code = predict.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_module_entry_point_json_on_files_and_a_folder(tiny):
    root = tiny["root"]
    cmd = [sys.executable, "-m", "inception_jax.tools.predict", "--weights", root / "tiny.msgpack"]
    cmd += [root / "china.jpg", root / "flower.jpg", root / "folder", "--json"]
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "googlenet" and report["num_classes"] == 3
    assert EvalTransform.from_dict(report["preprocessing"]) == TRANSFORM
    # Named files in the given order, then the folder's images, recursively, sorted by path.
    assert [image["file"] for image in report["images"]] == tiny["files"]
    expected = reference_probabilities(tiny, tiny["files"])
    for image, p in zip(report["images"], expected):
        predictions = image["predictions"]
        assert [q["rank"] for q in predictions] == [1, 2, 3]  # --top-k 5 capped at the 3 classes
        assert [q["index"] for q in predictions] == list(np.argsort(-p))
        assert [q["class"] for q in predictions] == [CLASSES[q["index"]] for q in predictions]
        got = np.array([q["probability"] for q in predictions])
        np.testing.assert_allclose(got, p[np.argsort(-p)], rtol=1e-4, atol=1e-5)
    assert "recorded with the weights" in result.stderr


def test_table_csv_top_k_and_overrides(tiny, capsys):
    """In-process runs; `--batch-size 2` over three images: two batches, the last one padded, one compile."""
    root = tiny["root"]
    files = tiny["files"][:3]
    batch = ["--batch-size", "2"]
    expected = reference_probabilities(tiny, files)

    code, out, _ = run_main(["--weights", root / "tiny.msgpack", *files, "--csv", "--top-k", "2", *batch], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["file"], r["rank"]) for r in rows] == [(f, str(k)) for f in files for k in (1, 2)]
    for r in rows:
        p = expected[files.index(r["file"])]
        best = np.argsort(-p)[int(r["rank"]) - 1]
        assert int(r["index"]) == best and r["class"] == CLASSES[best]
        np.testing.assert_allclose(float(r["probability"]), p[best], rtol=1e-4, atol=1e-5)

    code, out, _ = run_main(["--weights", root / "tiny.msgpack", *files, "--top-k", "1", *batch], capsys)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["file", "rank", "class", "probability"] and len(lines) == 3
    for line, f, p in zip(lines, files, expected):
        path, rank, name, prob = line.split()
        assert (path, rank, name) == (f, "1", CLASSES[int(np.argmax(p))])
        assert abs(float(prob) - p.max()) < 1e-4  # printed to 4 decimals

    # A file without records takes the transform from the flags; the same values give the same numbers.
    flags = ["--image-size", "48", "--crop-pct", "0.875", "--interpolation", "bicubic"]
    flags += ["--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5"]
    code, out, err = run_main(["--weights", root / "bare.msgpack", *files, "--json", *flags, *batch], capsys)
    assert code == 0, err
    report = json.loads(out)
    for image, p in zip(report["images"], expected):
        got = {q["index"]: q["probability"] for q in image["predictions"]}
        assert {q["class"] for q in image["predictions"]} == {"class_0", "class_1", "class_2"}  # no names
        np.testing.assert_allclose([got[i] for i in range(3)], p, rtol=1e-4, atol=1e-5)

    # A flag replaces one field of the recorded transform.
    code, out, err = run_main(["--weights", root / "tiny.msgpack", *files, "--json", "--crop-pct", "1", *batch], capsys)
    assert code == 0, err
    changed = EvalTransform(**(TRANSFORM.to_dict() | {"crop_pct": 1.0}))
    assert EvalTransform.from_dict(json.loads(out)["preprocessing"]) == changed
    p = reference_probabilities(tiny, files[:1], changed)[0]
    top = json.loads(out)["images"][0]["predictions"][0]
    np.testing.assert_allclose(top["probability"], p.max(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "case",
    ["missing image", "text named .jpg", "not a weights file", "missing weights", "no preprocessing", "empty folder"],
)
def test_bad_input_is_one_line_and_exit_status_2(case, tiny, capsys, tmp_path):
    root = tiny["root"]
    weights, images, extra = root / "tiny.msgpack", [root / "china.jpg"], []
    if case == "missing image":
        images, named = [root / "nowhere.jpg"], "nowhere.jpg"
    elif case == "text named .jpg":
        images, named = [root / "china.jpg", root / "text.jpg"], "text.jpg"
    elif case == "not a weights file":
        weights, named = root / "china.jpg", "not an inception_jax variables file"
    elif case == "missing weights":
        weights, named = root / "none.msgpack", "none.msgpack"
    elif case == "no preprocessing":
        weights, named = root / "bare.msgpack", "--preprocessing"
    else:
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "readme.md").write_text("no images here")
        images, named = [tmp_path / "empty"], "holds no images"
    code, out, err = run_main(["--weights", weights, *images, *extra], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and named in err, err


def test_bad_flag_values_are_named(tiny, capsys):
    root = tiny["root"]
    for flags, named in [
        (["--top-k", "0"], "--top-k"),
        (["--crop-pct", "1.5"], "crop_pct"),
        (["--std", "0.5", "0", "0.5"], "std"),
        (["--image-size", "8"], "minimum input of 15"),
        (["--preprocessing", "timm/inception_v9"], "unknown preprocessing preset"),
    ]:
        code, out, err = run_main(["--weights", root / "tiny.msgpack", root / "china.jpg", *flags], capsys)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and named in err, (flags, err)


def test_class_names_recorded_imagenet_or_indices(capsys):
    assert predict.class_names_for(3, CLASSES) == (list(CLASSES), "recorded with the weights")
    names, source = predict.class_names_for(1000, None)
    assert names[0] == "tench" and "ImageNet" in source
    names, _ = predict.class_names_for(1001, None)
    assert names[:2] == ["background", "tench"]
    assert predict.class_names_for(4, None)[0] == ["class_0", "class_1", "class_2", "class_3"]
    assert predict.class_names_for(4, CLASSES)[0][3] == "class_3"  # 3 names for 4 outputs: not used
    assert "records 3 class names for 4 outputs" in capsys.readouterr().err


# --- What the files record ----------------------------------------------------------------------------


def test_files_record_preprocessing_and_class_names(tiny, tmp_path):
    assert read_preprocessing(tiny["root"] / "tiny.msgpack") == TRANSFORM
    assert read_class_names(tiny["root"] / "tiny.msgpack") == CLASSES
    # Files written without them (as every file before them was) read as unknown.
    assert read_preprocessing(tiny["root"] / "bare.msgpack") is None
    assert read_class_names(tiny["root"] / "bare.msgpack") is None
    preset = preprocessing.preset("keras/inception_v3")
    save_variables(tmp_path / "k.msgpack", tiny["variables"], model="googlenet", options=OPTIONS, preprocessing=preset)
    recorded = read_preprocessing(tmp_path / "k.msgpack")
    assert recorded == preset and recorded.name == "keras/inception_v3" and recorded.resize == "square"
    with pytest.raises(ValueError, match="crop_pct"):
        save_variables(
            tmp_path / "x.msgpack", {}, model="googlenet", preprocessing=TRANSFORM.to_dict() | {"crop_pct": 2}
        )
    assert not (tmp_path / "x.msgpack").exists()


def test_convert_records_the_publishers_preprocessing_and_imagenet_names(tmp_path, capsys):
    from inception_jax.tools.convert.__main__ import main as convert

    net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True, transform_input=False)
    torch.save(net.state_dict(), tmp_path / "g.pth")
    assert convert(["--model", "googlenet", str(tmp_path / "g.pth"), str(tmp_path / "g.msgpack")]) == 0
    assert "torchvision/googlenet" in capsys.readouterr().out
    recorded = read_preprocessing(tmp_path / "g.msgpack")
    assert recorded == preprocessing.preset("torchvision/googlenet") and recorded.name == "torchvision/googlenet"
    assert read_class_names(tmp_path / "g.msgpack") == preprocessing.imagenet_class_names(1000)

    argv = ["--model", "googlenet", "--preprocessing", "none", str(tmp_path / "g.pth"), str(tmp_path / "n.msgpack")]
    assert convert(argv) == 0
    assert read_preprocessing(tmp_path / "n.msgpack") is None
    with pytest.raises(SystemExit) as exit_info:  # an unknown preset stops before anything is read
        convert(["--model", "googlenet", "--preprocessing", "timm/googlenet", "g.pth", str(tmp_path / "u.msgpack")])
    assert exit_info.value.code == 2 and not (tmp_path / "u.msgpack").exists()
    assert "unknown preprocessing preset" in capsys.readouterr().err


def test_convert_defaults_only_where_the_publisher_is_unambiguous(capsys):
    from inception_jax.tools.convert.__main__ import _choose_preprocessing

    def choose(model, framework, flag=None):
        return _choose_preprocessing(argparse.Namespace(model=model, preprocessing=flag), framework)

    assert choose("inception_v3", "keras").name == "keras/inception_v3"
    assert choose("inception_v4", "torch").name == "timm/inception_v4.tf_in1k"
    assert choose("fid_inception_v3", "torch").name == "pytorch-fid"
    # IR-v2's two timm tags share one transform: recorded, with a note saying so.
    assert choose("inception_resnet_v2", "torch") == preprocessing.preset("timm/inception_resnet_v2.tf_ens_adv_in1k")
    assert "the same as timm/inception_resnet_v2.tf_ens_adv_in1k" in capsys.readouterr().err
    # Inception-v3 from PyTorch: timm's tags and torchvision differ, so the user must say which.
    assert choose("inception_v3", "torch") is False
    err = capsys.readouterr().err
    assert err.startswith("error:") and "timm/inception_v3.gluon_in1k" in err and "torchvision/inception_v3" in err
    assert choose("inception_v3", "torch", "torchvision/inception_v3").scale_size == 342
    assert choose("bn_inception", "torch") is None  # no publisher: nothing recorded, and a note
    assert "no publisher's preprocessing is known" in capsys.readouterr().err


def test_listing_ignores_non_images_in_folders(tiny):
    assert predict.list_images([str(tiny["root"] / "folder")]) == tiny["files"][2:]
    assert os.path.basename(predict.list_images([str(tiny["root"] / "text.jpg")])[0]) == "text.jpg"
