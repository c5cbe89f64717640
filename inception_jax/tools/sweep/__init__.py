"""Ablation sweeps: `inception-sweep experiments/<study>.py --workdir DIR [--config.x=y ...]`.

A study file names a base config and yields the overrides of its runs (`study`); each run is the
`inception-train` command a user would type, validated before anything trains and run locally (`local`)
or as a SLURM job array (`slurm`), with `DIR/sweep.json` (`manifest`) recording every run so a re-run
skips finished ones and resumes the rest. Writing studies and every option: experiments/README.md.
"""

from inception_jax.tools.sweep.cli import main
from inception_jax.tools.sweep.local import child_env, cpu_slots, error_line, locked, run_local
from inception_jax.tools.sweep.manifest import MANIFEST, read_manifest, write_manifest
from inception_jax.tools.sweep.slurm import SBATCH, sbatch_script
from inception_jax.tools.sweep.study import (
    MAX_NAME,
    SweepError,
    expand,
    flag_value,
    load_study,
    ordered,
    parse_config,
    run_name,
    setting_of,
)

__all__ = [
    "MANIFEST",
    "MAX_NAME",
    "SBATCH",
    "SweepError",
    "child_env",
    "cpu_slots",
    "error_line",
    "expand",
    "locked",
    "flag_value",
    "load_study",
    "main",
    "ordered",
    "parse_config",
    "read_manifest",
    "run_local",
    "run_name",
    "sbatch_script",
    "setting_of",
    "write_manifest",
]
