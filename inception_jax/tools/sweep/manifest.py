"""The sweep's manifest (`sweep.json`, written through `rundir`): what makes two invocations the same
sweep, and each run's record (status, command, exit code, error line, wall time)."""

from __future__ import annotations

import os
import shlex
import sys

from inception_jax.tools.sweep.study import Run, Study, run_name, setting_of
from inception_jax.trainer import rundir

MANIFEST = rundir.MANIFEST_FILE
LOG_DIR = "logs"
DONE, FAILED, INTERRUPTED, PENDING, RUNNING = "done", "failed", "interrupted", "pending", "running"
read_manifest = rundir.read_manifest
write_manifest = rundir.write_manifest


def identity(study: Study, sweeps: list[str], extras: dict[str, str]) -> dict:
    """What makes two invocations the same sweep. Runs may be added or removed (more seeds), but a
    different base, OVERRIDES or command-line flags would mix incomparable runs in one directory."""
    return {
        "study": study.name,
        "base_config": study.base_config,
        "overrides": rundir.jsonable(study.overrides),
        "sweeps": sweeps,
        "flags": dict(sorted(extras.items())),
    }


def new_manifest(study: Study, sweeps: list[str], extras: dict[str, str], command: list[str]) -> dict:
    return {
        "format": 1,
        "created": rundir.now(),
        "updated": None,
        **identity(study, sweeps, extras),
        "study_file": study.path,
        "compare_within": list(study.compare_within),
        "baseline": study.baseline,
        "rank_against": study.rank_against,
        "command": shlex.join(command),
        "root": study.root,
        "python": sys.executable,
        "runs": [],
    }


def merge_runs(manifest: dict, runs: list[Run], sweep_dir: str) -> None:
    """Brings the manifest's run list in line with the study, keeping each known run's record."""
    old = {r["name"]: r for r in manifest.get("runs", [])}
    entries = []
    for run in runs:
        rec = old.get(run.name) or {
            "status": PENDING,
            "exit_code": None,
            "error": None,
            "wall_time_s": 0.0,
            "attempts": 0,
            "started": None,
            "finished": None,
            "commit": None,
        }
        if rec["status"] == RUNNING:  # the sweep that ran it died
            rec["status"] = INTERRUPTED
        rec.update(
            index=run.index,
            name=run.name,
            overrides=rundir.jsonable(run.overrides),
            setting=run_name(setting_of(run.overrides)),
            workdir=run.name,
            log=os.path.join(LOG_DIR, run.name + ".log"),
            argv=run.argv,
            total_steps=run.total_steps,
            num_classes=run.num_classes,
            params=run.params,
            gmacs=run.gmacs,
        )
        if rec["status"] != DONE and rundir.is_finished(os.path.join(sweep_dir, run.name)):
            rec.update(status=DONE, exit_code=0, error=None)  # e.g. finished by a SLURM array task
        run.record = rec
        entries.append(rec)
    manifest["runs"] = entries
