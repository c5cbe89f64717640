"""The benchmark harness runs end to end and reports what BENCHMARKS.md quotes (no timing assertions)."""

import json
import os
import subprocess
import sys

import pytest

from inception_jax import bench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_tiny_train_benchmark_against_torchvision_reports_every_field():
    pytest.importorskip("torchvision")
    cmd = [sys.executable, "-m", "inception_jax.bench", "--model", "googlenet", "--image-size", "32",
           "--batch-size", "2", "--steps", "2", "--warmup", "1", "--devices", "1", "--compare", "torchvision",
           "--model-option", "width_multiplier=0.25", "--json"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {"model": "googlenet", "mode": "train", "batch_size": 2, "image_size": 32, "dtype": "float32",
                "steps": 2, "model_options": {"width_multiplier": 0.25}, "reference": "torchvision googlenet"}
    assert {k: result[k] for k in expected} == expected
    for key in ("img_per_s", "img_per_s_min", "img_per_s_max", "ref_img_per_s", "compile_s",
                "compile_cached_s", "peak_mem_bytes", "xla_temp_bytes", "gflops_per_image", "achieved_tflop_per_s",
                "peak_tflop_per_s", "utilisation"):
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


@pytest.mark.parametrize("argv, message", [
    (["--model", "inception_v9"], "--model 'inception_v9' is not a registered variant"),
    (["--model", "googlenet", "--compare", "timm"], "--compare timm has no reference for 'googlenet'"),
    (["--model", "googlenet", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--model", "googlenet", "--model-option", "widht_multiplier=0.5"], "'widht_multiplier' is not an option"),
    (["--model", "googlenet", "--model-option", "width_multiplier"], "is not KEY=VALUE"),
    (["--model", "googlenet", "--model-option", "dtype=bfloat16"], "--dtype"),
    (["--model", "googlenet", "--threads", "999"], "--threads 999"),
    (["--model", "googlenet", "--devices", "999"], "--devices 999"),
    (["--model", "inception_v3", "--image-size", "64"], "below inception_v3's minimum 75"),
])
def test_bad_arguments_fail_before_anything_is_built(argv, message, capsys):
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
