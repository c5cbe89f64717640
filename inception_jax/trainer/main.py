"""Command line: `inception-train --config=configs/<file>.py[:arg] --workdir=DIR [--config.x=y]`.

Flags only; the work is in `train.train_and_evaluate`, which a notebook can call directly.
The same command runs on one machine and on a cluster: started once per host under SLURM (`srun`),
Open MPI (`mpirun`) or on every worker of a Cloud TPU pod, the processes find each other through
`jax.distributed`; on bare machines, give each one `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I` (or the `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` variables).
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
# New fields are let through the flag parser so that `validation.validated` can reject a misspelt
# one with a suggestion, and can accept any model option (`--config.model.aux_logits=True`).
config_flags.DEFINE_config_file(
    "config",
    None,
    "Path to a config file in configs/ (optionally :arg).",
    lock_config=False,
    accept_new_attributes=True,
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard logs.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, to join a cluster by hand.")
flags.DEFINE_integer("num_processes", None, "Number of processes in the cluster (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes) (with --coordinator_address).")
flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "auto: join a cluster when flags, JAX_* variables or a multi-process SLURM/Open MPI/Cloud TPU "
    "launch say so; on: always let JAX detect the cluster; off: run as a single process.",
)
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag (unknown config field, wrong type, missing file) is a one-line
    usage error with exit status 2 instead of a usage dump."""
    try:
        return FLAGS(argv)
    except (flags.Error, OSError) as e:  # OSError: the --config file cannot be loaded
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(2)


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("absl", "jax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # ours is the only bar a run shows
    from inception_jax.trainer import checkpoint, parallel, train, validation

    try:  # before anything touches a device: joining a cluster must come first
        parallel.initialize_distributed(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, mode=FLAGS.distributed
        )
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except validation.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (train.NonFiniteLossError, checkpoint.CheckpointWriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
