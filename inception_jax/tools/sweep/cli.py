"""`inception-sweep`'s command line."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from inception_jax.tools.sweep.local import locked, run_local
from inception_jax.tools.sweep.manifest import (
    DONE,
    FAILED,
    INTERRUPTED,
    LOG_DIR,
    MANIFEST,
    PENDING,
    identity,
    merge_runs,
    new_manifest,
    read_manifest,
    write_manifest,
)
from inception_jax.tools.sweep.slurm import SBATCH, sbatch_script
from inception_jax.tools.sweep.study import Run, SweepError, expand, load_study, parse_extra_flags, plan
from inception_jax.trainer import rundir


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2, as every other bad input
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        allow_abbrev=False,
        prog="inception-sweep",
        description=__doc__.splitlines()[0],
        epilog="Any --config.x=y flag applies to every run and is part of the sweep's identity: a sweep "
        "directory refuses a command whose flags differ from the ones it was started with.",
    )
    p.add_argument("study", help="a study file, e.g. experiments/module_design.py")
    p.add_argument("--workdir", required=True, help="the sweep directory: one workdir per run, the manifest, logs")
    p.add_argument(
        "--sweep",
        default="",
        help="comma-separated named sweeps (sweep_<name>() in the study); runs their product. Default: sweep()",
    )
    p.add_argument("--parallel", type=int, default=1, help="runs at once, each pinned to its own share of the CPUs")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and print the runs and their commands; write nothing"
    )
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again (by default they stay failed)")
    g = p.add_argument_group("SLURM (with --slurm: write DIR/sweep.sbatch and the manifest; submit nothing)")
    g.add_argument("--slurm", action="store_true")
    g.add_argument("--partition", default=None)
    g.add_argument("--time", default="04:00:00", help="time limit per run (default 04:00:00)")
    g.add_argument("--gpus", type=int, default=0, help="GPUs per node of each run")
    g.add_argument("--nodes", type=int, default=1, help="nodes per run (one process per node)")
    g.add_argument("--cpus-per-task", type=int, default=None)
    g.add_argument("--mem", default=None, help="memory per node, e.g. 64G")
    g.add_argument("--max-concurrent", type=int, default=None, help="array tasks running at once (%%N)")
    g.add_argument(
        "--sbatch-option",
        action="append",
        default=[],
        metavar="OPT",
        help="any other sbatch option, e.g. --sbatch-option=--account=abc (repeatable)",
    )
    return p


def main(argv: list[str] | None = None, out=sys.stdout) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads for the dataset checks
    argv = sys.argv[1:] if argv is None else argv
    args, rest = _parser().parse_known_args(argv)
    try:
        return _main(args, rest, argv, out)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args, rest: list[str], argv: list[str], out) -> int:
    if args.parallel < 1 or args.nodes < 1 or args.gpus < 0:
        raise SweepError("--parallel and --nodes must be at least 1 and --gpus at least 0")
    study = load_study(args.study)
    sweeps = [s for s in args.sweep.split(",") if s]
    overrides = expand(study, sweeps)
    extras = parse_extra_flags(rest, {k for o in overrides for k in o})
    sweep_dir = os.path.abspath(args.workdir)
    runs = plan(study, overrides, extras, sweep_dir, need_data=not (args.dry_run or args.slurm))
    manifest = read_manifest(sweep_dir) if os.path.isdir(sweep_dir) else None
    if manifest is not None:
        _check_identity(manifest, identity(study, sweeps, extras), sweep_dir)
    else:
        manifest = new_manifest(study, sweeps, extras, ["inception-sweep", *argv])
    manifest.update(
        root=study.root,
        python=sys.executable,
        study_file=study.path,
        compare_within=list(study.compare_within),
        baseline=study.baseline,
        rank_against=study.rank_against,
    )
    merge_runs(manifest, runs, sweep_dir)
    if args.retry_failed:
        for run in runs:
            if run.record["status"] == FAILED:
                run.record["status"] = INTERRUPTED if os.path.isdir(os.path.join(sweep_dir, run.name)) else PENDING

    if args.dry_run:
        _print_plan(runs, manifest, out)
        return 0
    os.makedirs(os.path.join(sweep_dir, LOG_DIR), exist_ok=True)
    with locked(sweep_dir) as lock_fd:
        if args.slurm:
            path = os.path.join(sweep_dir, SBATCH)
            with open(path, "w") as f:
                f.write(sbatch_script(manifest, runs, sweep_dir, args))
            write_manifest(sweep_dir, manifest)
            todo = sum(r.record["status"] != DONE for r in runs)
            print(
                f"wrote {path} ({todo} array task(s)) and {os.path.join(sweep_dir, MANIFEST)}; "
                f"submit with: sbatch {path}",
                file=out,
            )
            return 0
        write_manifest(sweep_dir, manifest)
        failed = run_local(
            runs, manifest, sweep_dir, parallel=args.parallel, python=sys.executable, lock_fd=lock_fd, out=out
        )
    return 1 if failed else 0


def _check_identity(manifest: dict, want: dict, sweep_dir: str) -> None:
    have = {k: manifest.get(k) for k in want}
    diff = [
        k for k in want if json.dumps(have[k], sort_keys=True) != json.dumps(rundir.jsonable(want[k]), sort_keys=True)
    ]
    if diff:
        k = diff[0]
        raise SweepError(
            f"{sweep_dir} holds another sweep ({k}: {have[k]!r} there, {rundir.jsonable(want[k])!r} in "
            f"this command; it was started by `{manifest.get('command')}`). Use another --workdir, "
            "or repeat that command to continue it"
        )


def _print_plan(runs: list[Run], manifest: dict, out) -> None:
    print(
        f"study {manifest['study']} ({manifest['study_file']}): {len(runs)} runs, base "
        f"{manifest['base_config']}, run from {manifest['root']}",
        file=out,
    )
    for run in runs:
        rec = run.record
        cost = f", {run.params:,} params, {run.gmacs:.4f} GMACs" if run.params is not None else ""
        steps = f"{run.total_steps} steps" if run.total_steps else "steps from num_epochs"
        print(
            f"[{run.index}] {run.name}: {rec['status']}, {steps}{cost}\n    {shlex.join(['python', *run.argv])}",
            file=out,
        )
