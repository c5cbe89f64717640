"""Ablation sweeps: `inception-sweep experiments/<study>.py --workdir DIR [--config.x=y ...]`.

A study file names its base config (`BASE_CONFIG = "configs/x.py[:arg]"`), may fix settings for every
run (`OVERRIDES = {"dotted.key": value}`), and defines `sweep()` and optional `sweep_<name>()`
generators of override dicts, keys exactly as `--config.x=y` takes them; `--sweep a,b` runs the product
of `sweep_a()` and `sweep_b()`. Seeds are an ordinary axis (`{"seed": 0}`).

Each run is the `inception-train` command a user would type, run as a subprocess in
`DIR/<name>`, where the name is spelt from the run's overrides. Every run's command is parsed and
validated before anything trains. `DIR/sweep.json` (the manifest) records the study, every run's
overrides, command, status, exit code, error line and wall time; `DIR/logs/<name>.log` holds each run's
output. Re-running the command skips finished runs and resumes interrupted ones (the trainer resumes by
itself); Ctrl-C forwards one SIGINT to the runs, which save a checkpoint and stop. `--slurm` writes an
sbatch job array running the same commands. See experiments/README.md.
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
