"""Running a sweep under SLURM: an sbatch job array whose task i runs run i of the manifest."""

from __future__ import annotations

import itertools
import os
import shlex

from inception_jax.tools.sweep.manifest import DONE, LOG_DIR, MANIFEST
from inception_jax.tools.sweep.study import Run

SBATCH = "sweep.sbatch"


def array_spec(indices: list[int]) -> str:
    """`0-3,7,9-10`: SLURM's --array list for these task ids."""
    parts = []
    for _, group in itertools.groupby(enumerate(sorted(indices)), key=lambda p: p[1] - p[0]):
        ids = [i for _, i in group]
        parts.append(str(ids[0]) if len(ids) == 1 else f"{ids[0]}-{ids[-1]}")
    return ",".join(parts)


def sbatch_script(manifest: dict, runs: list[Run], sweep_dir: str, args) -> str:
    """A job array with one task per unfinished run; task i runs run i of the manifest, the same
    command the local launcher runs. A multi-node run is one `srun` task per node; JAX joins them
    into one cluster from SLURM's environment."""
    todo = [r for r in runs if r.record["status"] != DONE]
    array = array_spec([r.index for r in todo]) + (f"%{args.max_concurrent}" if args.max_concurrent else "")
    options = [
        f"--job-name={manifest['study']}",
        f"--array={array}",
        f"--nodes={args.nodes}",
        "--ntasks-per-node=1",
        f"--time={args.time}",
        f"--output={os.path.join(sweep_dir, LOG_DIR, 'slurm-%A_%a.log')}",
        # SIGTERM two minutes before the time limit: the trainer saves and exits 0; re-submit resumes.
        "--signal=TERM@120",
    ]
    if args.partition:
        options.append(f"--partition={args.partition}")
    if args.gpus:
        options.append(f"--gpus-per-node={args.gpus}")
    if args.cpus_per_task:
        options.append(f"--cpus-per-task={args.cpus_per_task}")
    if args.mem:
        options.append(f"--mem={args.mem}")
    options += args.sbatch_option
    lines = [
        "#!/bin/bash",
        f"# Written by `{manifest['command']}`.",
        f"# Submit with `sbatch {os.path.join(sweep_dir, SBATCH)}`. Array task i runs run i of",
        f"# {os.path.join(sweep_dir, MANIFEST)}; only runs not yet done are in the array.",
        *[f"#SBATCH {o}" for o in options],
        "set -euo pipefail",
        f"cd {shlex.quote(manifest['root'])}",
        f"PYTHON=${{PYTHON:-{shlex.quote(manifest['python'])}}}",
        'case "${SLURM_ARRAY_TASK_ID:-}" in',
    ]
    for run in todo:
        lines.append(f"  {run.index}) ARGS=({shlex.join(run.argv[2:])}) ;;  # {run.name}")
    lines += [
        '  *) echo "error: no run $SLURM_ARRAY_TASK_ID in this array" >&2; exit 2 ;;',
        "esac",
        # One process per node; a run whose process fails is ended on every node (no peer waits forever).
        'exec srun --ntasks-per-node=1 --kill-on-bad-exit=1 "$PYTHON" -m inception_jax.trainer.main "${ARGS[@]}"',
        "",
    ]
    return "\n".join(lines)
