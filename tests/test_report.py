"""Issue 8: the study report, on runs written here by hand (what a sweep leaves on disk), so every
number in the table and every verdict can be checked against a hand computation."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from inception_jax.tools import report, sweep

TOTAL = 20
ENVIRONMENT = {
    "python": "3.11.7",
    "packages": {"jax": "0.10.2", "flax": "0.12.8"},
    "cpu": "AMD EPYC",
    "cpu_flags": ["avx2", "fma"],
    "cpu_count": 2,
    "platform": "cpu",
    "device_kind": "cpu",
    "device_count": 8,
    "process_count": 1,
    "xla_flags": "--xla_force_host_platform_device_count=8",
    "commit": "abc123",
}


def _run(directory, name, overrides, top1s, *, loss=1.0, total=TOTAL, config=None):
    """A finished workdir: train records every 5 steps, evals at 10 and at the end (the final one)."""
    workdir = directory / name
    workdir.mkdir(parents=True)
    records = []
    for step in range(5, total + 1, 5):
        records.append({"step": step, "train/loss": loss + (total - step) / 10, "perf/images_per_sec": 100.0 * step})
        if step % 10 == 0:
            records.append(
                {
                    "step": step,
                    "eval/top1": top1s[step // 10 - 1],
                    "eval/top5": 1.0,
                    "eval/loss": 0.1,
                    "eval/examples": 297,
                }
            )
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = config or {"seed": overrides.get("seed", 0), "total_steps": total, "model": {"name": "googlenet"}}
    (workdir / "config.json").write_text(json.dumps(cfg))
    (workdir / "environment.json").write_text(json.dumps(ENVIRONMENT))
    return workdir


def _manifest(directory, runs, compare_within=(), baseline=None):
    entries = []
    for i, (overrides, status, extra) in enumerate(runs):
        name = sweep.run_name(overrides)
        entries.append(
            {
                "index": i,
                "name": name,
                "workdir": name,
                "overrides": overrides,
                "status": status,
                "exit_code": extra.get("exit_code", 0),
                "error": extra.get("error"),
                "wall_time_s": 30.0,
                "params": extra.get("params", 1000),
                "gmacs": extra.get("gmacs", 0.5),
                "commit": "abc123",
            }
        )
    manifest = {
        "study": "toy",
        "study_file": str(directory / "toy.py"),
        "root": str(directory),
        "base_config": "configs/digits.py",
        "overrides": {"total_steps": TOTAL},
        "flags": {},
        "command": "inception-sweep toy.py --workdir x",
        "compare_within": list(compare_within),
        "baseline": baseline or {},
        "runs": entries,
    }
    (directory / sweep.MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def toy_sweep(tmp_path):
    """Setting A: final top-1 0.80, 0.82, 0.84; B: 0.60, 0.61, 0.62 (clearly apart); C: 0.81, 0.86, 0.79
    (within A's spread), plus a failed seed of C."""
    values = {"A": [0.80, 0.82, 0.84], "B": [0.60, 0.61, 0.62], "C": [0.81, 0.86, 0.79]}
    runs = []
    for setting, finals in values.items():
        for seed, final in enumerate(finals):
            overrides = {"model.variant": setting, "seed": seed}
            _run(tmp_path, sweep.run_name(overrides), overrides, [0.5, final], loss=0.1 * (seed + 1))
            runs.append((overrides, "done", {"gmacs": {"A": 0.5, "B": 0.1, "C": 2.0}[setting]}))
    runs.append(
        ({"model.variant": "C", "seed": 3}, "failed", {"exit_code": 1, "error": "error: loss is NaN or Inf at step 3"})
    )
    _manifest(tmp_path, runs)
    return tmp_path, values


def test_rows_hold_mean_and_spread_over_seeds(toy_sweep):
    directory, values = toy_sweep
    rows = report.summarise(str(directory))
    assert [r["label"] for r in rows] == ["model.variant=A", "model.variant=B", "model.variant=C"]
    for row, finals in zip(rows, values.values()):
        mean = sum(finals) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in finals) / 2)
        assert row["top1_mean"] == pytest.approx(mean) and row["top1_std"] == pytest.approx(std)
        assert row["seeds"] == 3 and row["top5_mean"] == 1.0
        assert row["train_loss_mean"] == pytest.approx(0.2)  # the last window's loss: 0.1, 0.2, 0.3
        assert row["images_per_sec"] == pytest.approx(1500.0)  # median of 1000, 1500, 2000 (500: the first)
        assert row["wall_time_s"] == 30.0 and row["params"] == 1000
    assert rows[2]["runs"] == 4 and rows[2]["failed"] == 1
    assert rows[2]["errors"] == ["model.variant=C,seed=3: exit 1: error: loss is NaN or Inf at step 3"]


def test_verdicts_use_welchs_t_test_with_a_confidence_interval(toy_sweep):
    from scipy import stats

    directory, values = toy_sweep
    rows = report.summarise(str(directory))
    clear = report.compare(rows[0], rows[1])
    p = stats.ttest_ind(values["B"], values["A"], equal_var=False).pvalue
    assert p < 0.05
    assert clear.startswith(
        "`model.variant=B` vs `model.variant=A`: eval/top1 61.0 ± 1.0 vs 82.0 ± 2.0 (3 and 3 seeds), "
        "a difference of -21.0 points (95% CI ["
    )
    assert report.p_text(p) in clear and "significant after correction" in clear
    assert report.p_text(0.0004) == "p < 0.001" and report.p_text(0.0421) == "p = 0.042"
    # Welch's interval by hand: delta -/+ t(0.975, df) * sqrt(sa^2/na + sb^2/nb), df Welch-Satterthwaite.
    sa2, sb2 = np.var(values["A"], ddof=1) / 3, np.var(values["B"], ddof=1) / 3
    df = (sa2 + sb2) ** 2 / (sa2**2 / 2 + sb2**2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(sa2 + sb2)
    delta = np.mean(values["B"]) - np.mean(values["A"])
    assert f"95% CI [{100 * (delta - half):+.1f}, {100 * (delta + half):+.1f}]" in clear
    close = report.compare(rows[0], rows[2])
    assert "not significant after correction" in close and "cannot tell the two apart" in close
    lonely = dict(rows[1], values=[0.6], seeds=1)
    assert "no verdict: each setting needs at least 2 finished seeds" in report.compare(rows[0], lonely)


def test_holm_adjusts_as_computed_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (monotone)
    assert report.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert report.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert report.holm([]) == []


@pytest.mark.parametrize("seeds, expected", [(3, 7.68), (5, 5.06)])
def test_minimum_detectable_difference_has_80_percent_power(seeds, expected):
    """At sd 2.5 points: about 7.7 points with 3 seeds, 5.1 with 5; a simulated t-test at that difference
    rejects in 80% of 20,000 trials."""
    from scipy import stats

    mdd = report.minimum_detectable_difference(2.5, seeds)
    assert mdd == pytest.approx(expected, abs=0.01)
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.0, 2.5, (20_000, seeds)), rng.normal(mdd, 2.5, (20_000, seeds))
    power = np.mean(stats.ttest_ind(a, b, axis=1).pvalue < 0.05)
    assert power == pytest.approx(0.80, abs=0.01)


def test_welch_matches_the_welch_satterthwaite_formula():
    from scipy import stats

    a, b = [0.80, 0.82, 0.84, 0.83], [0.60, 0.61, 0.65]
    mean = lambda x: sum(x) / len(x)
    var = lambda x: sum((v - mean(x)) ** 2 for v in x) / (len(x) - 1)
    va, vb = var(a) / len(a), var(b) / len(b)
    t = (mean(a) - mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    assert report.welch(a, b) == pytest.approx((t, df, 2 * stats.t.sf(abs(t), df)))
    assert 2 < df < 5  # between min(n) - 1 and the pooled test's n_a + n_b - 2


def test_report_md_and_valid_pngs(toy_sweep, tmp_path_factory):
    import matplotlib.image

    directory, _ = toy_sweep
    out = tmp_path_factory.mktemp("out")
    assert report.main([str(directory), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert (
        "| `model.variant=A` | 3/3 | 82.0 ± 2.0 | 100.0 ± 0.0 | 80.0, 82.0, 84.0 | 0.200 ± 0.100 "
        "| 1,000 | 0.5000 | 1500 | 30 | 0 |" in text
    )
    assert "| `model.variant=C` | 3/4 |" in text and "- model.variant=C,seed=3: exit 1: error: loss is NaN" in text
    assert "Runs started from commit `abc123`" in text
    assert "| 80.0, 82.0, 84.0 |" in text  # per-seed values
    assert "Holm's correction over all 2 tests of this report" in text
    assert "Minimum detectable difference:" in text
    assert (
        "Environment (9 runs): Python 3.11.7, jax 0.10.2, flax 0.12.8; CPU AMD EPYC (avx2 fma; 2 cores); "
        "8 cpu device(s) in 1 process(es); XLA_FLAGS `--xla_force_host_platform_device_count=8`.\n"
        "1 run recorded no environment." in text
    )
    # Each setting compared with the first (the settings differ in one key each).
    assert text.count("vs `model.variant=A`") == 2
    for name in ("toy_curves.png", "toy_gmacs.png"):
        assert f"]({name})" in text
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_comparisons_stay_within_groups(tmp_path):
    settings = [
        {"model.name": "googlenet", "model.aux_logits": False},
        {"model.name": "googlenet", "model.aux_logits": True, "aux_loss_weights": [0.3, 0.3]},
        {"model.name": "inception_v3", "model.aux_logits": False},
        {"model.name": "inception_v3", "model.aux_logits": True, "model.bn_aux": True},
        {"model.name": "inception_v3", "model.aux_logits": True, "model.bn_aux": False},
    ]
    runs = []
    for setting in settings:
        for seed in (0, 1):
            overrides = {**setting, "seed": seed}
            _run(tmp_path, sweep.run_name(overrides), overrides, [0.5, 0.7 + 0.01 * seed])
            runs.append((overrides, "done", {}))
    _manifest(tmp_path, runs, compare_within=("model.name",))
    study = report.load_studies(str(tmp_path))[0]
    rows = report.rows_of(study)
    pairs = [(a["label"], b["label"]) for a, b in report._pairs(study, rows)]
    assert pairs == [
        (
            "model.aux_logits=False,model.name=googlenet",
            "aux_loss_weights=(0.3, 0.3),model.aux_logits=True,model.name=googlenet",
        ),
        (
            "model.aux_logits=False,model.name=inception_v3",
            "model.aux_logits=True,model.bn_aux=True,model.name=inception_v3",
        ),
        (
            "model.aux_logits=True,model.bn_aux=True,model.name=inception_v3",
            "model.aux_logits=True,model.bn_aux=False,model.name=inception_v3",
        ),
    ]


def test_plain_workdirs_and_unfinished_runs(tmp_path):
    """Without a manifest, the settings are the config fields that differ; a run whose last eval is not at
    its final step is unfinished and left out of the statistics."""
    for lr in (0.1, 0.2):
        for seed in (0, 1):
            config = {"seed": seed, "total_steps": TOTAL, "schedule": {"base_learning_rate": lr}, "progress_bar": False}
            _run(tmp_path, f"lr{lr}_s{seed}", {"seed": seed}, [0.5, 0.6 + lr], config=config)
    unfinished = tmp_path / "lr0.2_s1"
    records = [json.loads(line) for line in (unfinished / "metrics.jsonl").read_text().splitlines()]
    (unfinished / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records if r["step"] <= 10) + '{"step": 15, "train/lo'
    )  # killed mid-write
    rows = report.summarise(str(tmp_path))
    assert [r["label"] for r in rows] == ["schedule.base_learning_rate=0.1", "schedule.base_learning_rate=0.2"]
    assert rows[0]["seeds"] == 2 and rows[0]["top1_mean"] == pytest.approx(0.7)
    assert rows[1]["seeds"] == 1 and rows[1]["unfinished"] == 1 and rows[1]["top1_std"] is None


def test_a_directory_without_runs_is_one_error_line(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no sweep.json and no run directory" in err and len(err.splitlines()) == 1
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "report.md")


def test_a_baseline_is_compared_with_every_other_setting(toy_sweep):
    directory, _ = toy_sweep
    manifest = json.loads((directory / sweep.MANIFEST).read_text())
    manifest["baseline"] = {"model.variant": "C"}
    (directory / sweep.MANIFEST).write_text(json.dumps(manifest))
    study = report.load_studies(str(directory))[0]
    rows = report.rows_of(study)
    pairs = [(a["label"], b["label"]) for a, b in report._pairs(study, rows)]
    assert pairs == [("model.variant=C", "model.variant=A"), ("model.variant=C", "model.variant=B")]
    manifest["baseline"] = {"model.variant": "D"}
    (directory / sweep.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="matches 0 settings"):
        report._pairs(report.load_studies(str(directory))[0], rows)


def test_the_same_runs_give_the_same_report_byte_for_byte(toy_sweep, tmp_path_factory):
    directory, _ = toy_sweep
    outs = [tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")]
    for out in outs:
        assert report.main([str(directory), "--out", str(out)]) == 0
    names = sorted(os.listdir(outs[0]))
    assert names == sorted(os.listdir(outs[1])) and "report.md" in names and len(names) == 3
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    assert b"matplotlib" not in (outs[0] / "toy_curves.png").read_bytes()


def test_a_ranking_is_judged_by_spearmans_rho_against_the_reference(toy_sweep):
    from scipy import stats

    directory, values = toy_sweep
    manifest = json.loads((directory / sweep.MANIFEST).read_text())
    manifest["rank_against"] = {"key": "model.variant", "values": {"A": 3.0, "B": 1.0, "C": 2.0}, "source": "toy"}
    (directory / sweep.MANIFEST).write_text(json.dumps(manifest))
    study = report.load_studies(str(directory))[0]
    (line, _) = report._rank_lines(study, report.rows_of(study), "eval/top1")
    means = [np.mean(values[k]) for k in "ABC"]  # A 0.82, B 0.61, C 0.82: ranks 2.5, 1, 2.5 vs 3, 1, 2
    rho = stats.spearmanr(means, [3.0, 1.0, 2.0]).statistic
    assert line.startswith(f"Rank against toy: Spearman's rho = {rho:+.2f} over 3 settings")
    assert "no evidence" in line  # three settings can never reach p < 0.05
