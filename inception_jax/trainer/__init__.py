"""The trainer: `train_and_evaluate(config, workdir)` with its configs, data pipeline, checkpoints,
parallelism, metrics and run directory; `inception-train` (`trainer/main.py`) is its command line."""
