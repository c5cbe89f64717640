"""Writing a run's metrics (`metrics.jsonl`, TensorBoard events) and `config.json`, and the progress
bar. `rundir` owns the files' names and reads them back. Only process 0 writes; the other processes get
a writer that does nothing."""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from inception_jax.trainer import rundir


def _jsonable(value):
    value = np.asarray(value).item() if np.ndim(value) == 0 else np.asarray(value).tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN; keep the record readable by any parser
    return value


class MetricWriter:
    """Appends metrics to `metrics.jsonl` and TensorBoard; `truncate_after(step)` on resume."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, rundir.METRICS_FILE)
        self._tb = None
        self._tb_dir = os.path.join(workdir, "tensorboard")
        self._purge_step = None

    def truncate_after(self, step: int) -> None:
        """Drops records newer than `step`, so a resumed run rewrites them exactly once (TensorBoard
        hides its events after `step` through the writer's `purge_step`)."""
        self._purge_step = step + 1
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            kept = [line for line in f if 0 <= _record_step(line) <= step]  # a torn line is -1: dropped
        kept = [line if line.endswith("\n") else line + "\n" for line in kept]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in sorted(metrics.items())}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        tb = self._writer()
        if tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    tb.add_scalar(k, v, step)
            tb.flush()

    def _writer(self):
        if self._tb is None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboardX is a dependency
                return None
            self._tb = SummaryWriter(self._tb_dir, purge_step=self._purge_step)
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError):
        return -1  # a torn last line from a killed run: drop it


def write_config(workdir: str, config) -> None:
    with open(os.path.join(workdir, rundir.CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


class Progress:
    """A tqdm bar with step, loss, images/s and ETA; silent when disabled (other processes, tests)."""

    def __init__(self, total: int, initial: int, *, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Throughput:
    """Images per second between two calls of `rate`."""

    def __init__(self):
        self.t0, self.images = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.images += n

    def rate(self) -> float:
        t = time.perf_counter()
        r = self.images / max(t - self.t0, 1e-9)
        self.t0, self.images = t, 0
        return r
