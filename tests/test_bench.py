"""The benchmark harness runs end to end and reports what BENCHMARKS.md quotes (no timing assertions)."""

import io
import json
import os
import subprocess
import sys
import tempfile

import pytest

from inception_jax.tools import bench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_tiny_train_benchmark_against_torchvision_reports_every_field():
    pytest.importorskip("torchvision")
    cmd = [
        sys.executable,
        "-m",
        "inception_jax.tools.bench",
        "--model",
        "googlenet",
        "--image-size",
        "32",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--devices",
        "1",
        "--compare",
        "torchvision",
        "--model-option",
        "width_multiplier=0.25",
        "--json",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {
        "model": "googlenet",
        "mode": "train",
        "batch_size": 2,
        "image_size": 32,
        "dtype": "float32",
        "steps": 2,
        "model_options": {"width_multiplier": 0.25},
        "reference": "torchvision googlenet",
        "xla_cpu_convolutions": "eigen",
    }
    assert {k: result[k] for k in expected} == expected
    for key in (
        "img_per_s",
        "img_per_s_min",
        "img_per_s_max",
        "ref_img_per_s",
        "compile_s",
        "compile_cached_s",
        "peak_mem_bytes",
        "xla_temp_bytes",
        "gflops_per_image",
        "achieved_tflop_per_s",
        "peak_tflop_per_s",
        "utilisation",
    ):
        assert isinstance(result[key], (int, float)) and result[key] > 0, (key, result[key])
    assert result["img_per_s_min"] <= result["img_per_s"] <= result["img_per_s_max"]
    assert result["ratio"] == pytest.approx(result["img_per_s"] / result["ref_img_per_s"])
    # The second compile of the step must come from the persistent cache the first one filled.
    assert result["compile_cache_hit"] is True
    # A train step does three forward passes' worth of multiply-accumulates, 2 FLOPs each: at width
    # 0.25 and 32 px GoogLeNet's forward pass is 2.79 M MACs (the infer figure from profile.count_macs).
    from inception_jax.models import profile, registry

    model = registry.create_model("googlenet", width_multiplier=0.25)
    macs = profile.count_macs(model, profile.abstract_variables(model, 32), 32)
    assert result["gflops_per_image"] == pytest.approx(3 * 2 * macs / 1e9)
    assert {"jax", "torch", "torchvision"} <= set(result["versions"])


def test_tiny_input_benchmark_times_the_training_pipeline_and_reports_every_field():
    cmd = [
        sys.executable,
        "-m",
        "inception_jax.tools.bench",
        "--model",
        "inception_v3",
        "--mode",
        "input",
        "--image-size",
        "75",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--sample-examples",
        "16",
        "--dtype",
        "bfloat16",
        "--json",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "note: --mode input ignores --dtype" in proc.stderr
    result = json.loads(proc.stdout)  # the JSON object alone: TFDS's build messages go to stderr
    expected = {
        "model": "inception_v3",
        "mode": "input",
        "batch_size": 4,
        "image_size": 75,
        "dtype": "uint8",
        "steps": 2,
        "threads": 1,
        "dataset": "sample_photos",
        "split": "train",
        "num_examples": 16,
        "color_distortion": True,
        "interpolation": "bicubic",
    }
    assert {k: result[k] for k in expected} == expected
    for key in ("img_per_s", "img_per_s_min", "img_per_s_max", "img_per_cpu_s", "mean_jpeg_bytes"):
        assert isinstance(result[key], (int, float)) and result[key] > 0, (key, result[key])
    assert result["img_per_s_min"] <= result["img_per_s"] <= result["img_per_s_max"]
    assert 20_000 < result["mean_jpeg_bytes"] < 200_000  # photo-sized JPEGs
    assert {k: result[k] for k in bench.MODEL_STEP_FIELDS} == dict.fromkeys(bench.MODEL_STEP_FIELDS)
    assert {"tensorflow", "tensorflow_datasets", "python"} <= set(result["versions"])
    assert "sample_photos train, colour distortion" in bench.format_table(result)
    row = bench.markdown_table([result]).splitlines()[-1]
    assert "| input | 4 | 75 | uint8 |" in row and row.endswith("| - | - | - | - | - | - |"), row


def test_sample_photos_are_imagenet_sized_jpegs_of_two_classes_and_deterministic(tmp_path):
    import tensorflow_datasets as tfds
    from PIL import Image

    from inception_jax.trainer.data import sample_photos

    def records(name):
        builder = sample_photos.ensure_prepared(str(tmp_path / name), num_train=12, seed=3)
        source = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
        return sorted((bytes(ex["image"]), int(ex["label"])) for ex in (source[i] for i in range(len(source))))

    first, second = records("a"), records("b")
    assert len(first) == 12 and first == second  # two builds, the same bytes
    for encoded, label in first:
        image = Image.open(io.BytesIO(encoded))
        assert image.format == "JPEG" and image.mode == "RGB" and image.size in {(500, 375), (375, 500)}
        assert label in {0, 1}
    photos = sample_photos.load_photos()
    assert sample_photos.make_example(photos, 4, 0) != sample_photos.make_example(photos, 3, 0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "inception_v9"], "--model 'inception_v9' is not a registered variant"),
        (["--model", "googlenet", "--compare", "timm"], "--compare timm has no reference for 'googlenet'"),
        (["--model", "googlenet", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--model", "googlenet", "--model-option", "widht_multiplier=0.5"], "'widht_multiplier' is not an option"),
        (["--model", "googlenet", "--model-option", "width_multiplier"], "is not KEY=VALUE"),
        (["--model", "googlenet", "--model-option", "dtype=bfloat16"], "--dtype"),
        (["--model", "googlenet", "--threads", "999"], "--threads 999"),
        (["--model", "googlenet", "--devices", "999"], "--devices 999"),
        (["--model", "inception_v3", "--image-size", "64"], "below inception_v3's minimum 75"),
        (
            ["--model", "inception_v3", "--mode", "input", "--compare", "timm"],
            "--compare timm does not apply to --mode input",
        ),
        (
            [
                "--model",
                "inception_v3",
                "--mode",
                "input",
                "--dataset",
                "imagenet2012",
                "--data-dir",
                os.path.join(tempfile.gettempdir(), "inception_jax_no_such_data_dir"),
            ],
            "--dataset imagenet2012 is not prepared in --data-dir",
        ),
        (["--model", "inception_v3", "--mode", "input", "--data-dir", "/data"], "--data-dir /data needs --dataset"),
        (["--model", "inception_v3", "--dataset", "imagenet2012"], "--dataset applies to --mode input only"),
    ],
)
def test_bad_arguments_fail_before_anything_is_built(argv, message, capsys):
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1, err  # one line, whatever TensorFlow logged elsewhere
