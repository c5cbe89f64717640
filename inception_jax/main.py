"""Command line: `python -m inception_jax.main --config=configs/<file>.py[:arg] --workdir=DIR [--config.x=y]`.

Flags only; the work is in `train.train_and_evaluate`, which a notebook can call directly.
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
config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/ (optionally :arg).",
                                lock_config=False, accept_new_attributes=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard logs.")
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
    from inception_jax import checkpoint, train, validation

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
