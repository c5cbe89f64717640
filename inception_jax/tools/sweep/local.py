"""Running a sweep on this machine: a few runs at a time, each pinned to its own CPUs, signals passed on
once, and each run's outcome read from its run directory's status record."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from inception_jax.tools.sweep.manifest import DONE, FAILED, INTERRUPTED, LOG_DIR, MANIFEST, RUNNING, write_manifest
from inception_jax.tools.sweep.study import Run, SweepError
from inception_jax.trainer import rundir

LOCK = ".sweep.lock"


def cpu_slots(parallel: int) -> list[list[int] | None]:
    """Disjoint CPU sets, one per concurrent run (None: one run, all CPUs). XLA and TensorFlow size
    their thread pools from the CPUs a process may run on, so pinning is what splits the threads."""
    cpus = sorted(os.sched_getaffinity(0))
    if parallel <= 1:
        return [None]
    if parallel > len(cpus):  # more runs than CPUs: they share, one CPU each
        return [[cpus[i % len(cpus)]] for i in range(parallel)]
    size, extra = divmod(len(cpus), parallel)
    slots, start = [], 0
    for i in range(parallel):
        n = size + (i < extra)
        slots.append(cpus[start : start + n])
        start += n
    return slots


def child_env(cpus: list[int] | None) -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if cpus is not None:
        n = str(len(cpus))
        for var in (
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "TF_NUM_INTRAOP_THREADS",
            "TF_NUM_INTEROP_THREADS",
        ):
            env[var] = n
    return env


def execution_order(runs: list[Run]) -> list[Run]:
    """Seed-major: the first run of every setting before any second one, so later seeds find the
    setting's programs in the trainer's persistent compilation cache."""
    rank, counts = {}, {}
    for run in runs:
        key = run.record["setting"]
        counts[key] = counts.get(key, 0) + 1
        rank[run.index] = counts[key]
    first = {}
    for run in runs:
        first.setdefault(run.record["setting"], run.index)
    return sorted(runs, key=lambda r: (rank[r.index], first[r.record["setting"]], r.index))


class _Stop:
    """SIGINT/SIGTERM/SIGHUP during a sweep: start nothing new and pass the signal on to the runs once
    (they save and exit 0); a second Ctrl-C passes on a second SIGINT, which stops them at once."""

    def __init__(self):
        self.count, self.signum, self._previous = 0, None, {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.count += 1
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


@dataclass
class _Active:
    run: Run
    proc: subprocess.Popen
    slot: int
    t0: float
    log: Any
    log_start: int
    signalled: bool = False


def run_local(
    runs: list[Run], manifest: dict, sweep_dir: str, *, parallel: int, python: str, lock_fd: int, out=sys.stdout
) -> int:
    """Runs what is not finished, `parallel` at a time; returns the number of failed runs."""
    todo = [r for r in execution_order(runs) if r.record["status"] not in (DONE, FAILED)]
    slots = cpu_slots(parallel)
    free = list(range(len(slots)))
    active: list[_Active] = []
    os.makedirs(os.path.join(sweep_dir, LOG_DIR), exist_ok=True)
    total, started, forwarded = len(todo), 0, 0
    where = ", ".join("all CPUs" if s is None else "CPU " + ",".join(map(str, s)) for s in slots)
    print(
        f"{len(runs)} runs: {sum(r.record['status'] == DONE for r in runs)} done, "
        f"{sum(r.record['status'] == FAILED for r in runs)} failed earlier, {total} to run, "
        f"{len(slots)} at a time ({where})",
        file=out,
        flush=True,
    )
    with _Stop() as stop:
        while (todo and not stop.count) or active:
            while todo and free and not stop.count:
                run, slot = todo.pop(0), free.pop(0)
                started += 1
                # The commit each run starts from: code edited while a sweep runs shows as another commit
                # or as +dirty on the runs started after the edit.
                active.append(
                    _start(run, slots[slot], slot, sweep_dir, manifest["root"], python, lock_fd, rundir.commit())
                )
                write_manifest(sweep_dir, manifest)
                print(
                    f"[{started}/{total}] start {run.name}"
                    + (f" (CPU {','.join(map(str, slots[slot]))})" if slots[slot] else ""),
                    file=out,
                    flush=True,
                )
            if stop.count > forwarded:
                if forwarded == 0:
                    print(
                        f"stopping: passing signal {stop.signum} to {len(active)} run(s), which save a checkpoint "
                        "(Ctrl-C again to stop them at once)",
                        file=out,
                        flush=True,
                    )
                for a in active:
                    with contextlib.suppress(ProcessLookupError):
                        a.proc.send_signal(signal.SIGINT if forwarded else stop.signum)
                    a.signalled = True
                forwarded = stop.count
            for a in [a for a in active if a.proc.poll() is not None]:
                active.remove(a)
                free.append(a.slot)
                free.sort()
                _finish(a, sweep_dir)
                write_manifest(sweep_dir, manifest)
                rec = a.run.record
                detail = {
                    DONE: _final_metric(sweep_dir, a.run),
                    INTERRUPTED: "re-run the sweep to resume",
                    FAILED: f"exit {rec['exit_code']}: {rec['error']}",
                }[rec["status"]]
                print(
                    f"  {rec['status']:<11} {a.run.name} after {time.monotonic() - a.t0:.0f} s: {detail}",
                    file=out,
                    flush=True,
                )
            time.sleep(0.1)
    failed = [r for r in runs if r.record["status"] == FAILED]
    left = [r for r in runs if r.record["status"] not in (DONE, FAILED)]
    summary = f"{sum(r.record['status'] == DONE for r in runs)} of {len(runs)} runs done"
    if failed:
        summary += f", {len(failed)} failed (see {MANIFEST}; --retry-failed runs them again)"
    if left:
        summary += f"; stopped with {len(left)} left: re-run the same command to continue"
    print(summary, file=out, flush=True)
    return len(failed)


def _start(run: Run, cpus, slot: int, sweep_dir: str, root: str, python: str, lock_fd: int, commit) -> _Active:
    rec = run.record
    log = open(os.path.join(sweep_dir, rec["log"]), "a")
    log.write(f"\n=== attempt {rec['attempts'] + 1} at {rundir.now()}: {shlex.join([python, *run.argv])}\n")
    log.flush()
    # Own session: a terminal's Ctrl-C reaches only the sweep, which passes it on exactly once.
    # The lock descriptor is inherited, so DIR stays locked while any run of this sweep is alive.
    proc = subprocess.Popen(
        [python, *run.argv],
        cwd=root,
        env=child_env(cpus),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        pass_fds=(lock_fd,),
    )
    if cpus is not None:  # right after exec, before the child has started any thread
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(proc.pid, cpus)
    rec.update(
        status=RUNNING,
        attempts=rec["attempts"] + 1,
        started=rec["started"] or rundir.now(),
        commit=rec["commit"] or commit,
    )
    return _Active(run, proc, slot, time.monotonic(), log, log.tell())


def _finish(a: _Active, sweep_dir: str) -> None:
    a.log.close()
    rec = a.run.record
    with open(os.path.join(sweep_dir, rec["log"]), errors="replace") as f:
        f.seek(a.log_start)
        output = f.read()
    code = a.proc.returncode
    rec["wall_time_s"] = round(rec["wall_time_s"] + time.monotonic() - a.t0, 1)
    rec["finished"] = rundir.now()
    if rundir.is_finished(os.path.join(sweep_dir, a.run.name)):  # the trainer's status record
        rec.update(status=DONE, exit_code=0, error=None)
    elif a.signalled or code == 0:  # stopped by us (or by a signal from outside): it saved; resume later
        rec.update(status=INTERRUPTED, exit_code=code, error=None)
    else:
        rec.update(status=FAILED, exit_code=code, error=error_line(output, code))


def error_line(output: str, code: int) -> str:
    """The run's `error: ...` line, else the last line it printed (a traceback's exception)."""
    lines = [line.strip() for chunk in output.splitlines() for line in chunk.split("\r") if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1]
    if code < 0:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    return lines[-1] if lines else "(no output)"


def _final_metric(sweep_dir: str, run: Run) -> str:
    evals = [r for r in rundir.read_metrics(os.path.join(sweep_dir, run.name)) if "eval/top1" in r]
    return f"eval/top1 {evals[-1]['eval/top1']:.4f}" if evals else ""


@contextlib.contextmanager
def locked(sweep_dir: str):
    """One sweep (and its runs) per directory at a time."""
    fd = os.open(os.path.join(sweep_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SweepError(
            f"another sweep, or a run it started, is still running in {sweep_dir}; wait for it or stop it first"
        ) from None
    try:
        yield fd
    finally:
        os.close(fd)
