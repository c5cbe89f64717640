"""Every committed study whose runs are committed (`experiments/results/<study>/runs`, written by
`scripts/keep_runs.sh`) regenerates its report.md and plots from them byte for byte."""

from __future__ import annotations

import filecmp
import json
import os

import pytest

from inception_jax.tools import report

RESULTS = os.path.join(os.path.dirname(__file__), "..", "experiments", "results")
KEPT = sorted(d for d in os.listdir(RESULTS) if os.path.isdir(os.path.join(RESULTS, d, "runs")))


def test_some_study_keeps_its_runs():
    assert "regime_pilot" in KEPT


@pytest.mark.parametrize("study", KEPT)
def test_committed_report_regenerates_exactly_from_its_runs(study, tmp_path):
    committed = os.path.join(RESULTS, study)
    report.write_report(os.path.join(committed, "runs"), str(tmp_path))
    made = sorted(os.listdir(tmp_path))
    assert "report.md" in made and any(f.endswith(".png") for f in made)
    assert made == sorted(f for f in os.listdir(committed) if f != "runs")
    for name in made:
        assert filecmp.cmp(tmp_path / name, os.path.join(committed, name), shallow=False), (
            f"{name} differs: run `bash scripts/keep_runs.sh runs/{study} experiments/results/{study}`"
        )


@pytest.mark.parametrize("study", KEPT)
def test_kept_manifest_names_paths_relative_to_the_checkout(study):
    with open(os.path.join(RESULTS, study, "runs", "sweep.json")) as f:
        manifest = json.load(f)
    assert manifest["root"] == "." and not any(os.path.isabs(manifest[k]) for k in ("study_file", "python"))
    assert not any(os.path.isabs(arg.split("=", 1)[-1]) for run in manifest["runs"] for arg in run["argv"])
