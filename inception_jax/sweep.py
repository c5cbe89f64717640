"""Ablation sweeps: `python -m inception_jax.sweep experiments/<study>.py --workdir DIR [--config.x=y ...]`.

A study file names its base config (`BASE_CONFIG = "configs/x.py[:arg]"`), may fix settings for every
run (`OVERRIDES = {"dotted.key": value}`), and defines `sweep()` and optional `sweep_<name>()`
generators of override dicts, keys exactly as `--config.x=y` takes them; `--sweep a,b` runs the product
of `sweep_a()` and `sweep_b()`. Seeds are an ordinary axis (`{"seed": 0}`).

Each run is the `python -m inception_jax.main` command a user would type, run as a subprocess in
`DIR/<name>`, where the name is spelt from the run's overrides. Every run's command is parsed and
validated before anything trains. `DIR/sweep.json` (the manifest) records the study, every run's
overrides, command, status, exit code, error line and wall time; `DIR/logs/<name>.log` holds each run's
output. Re-running the command skips finished runs and resumes interrupted ones (the trainer resumes by
itself); Ctrl-C forwards one SIGINT to the runs, which save a checkpoint and stop. `--slurm` writes an
sbatch job array running the same commands. See experiments/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads (dataset checks), as main does

MANIFEST = "sweep.json"
SBATCH = "sweep.sbatch"
LOCK = ".sweep.lock"
LOG_DIR = "logs"
MAX_NAME = 160  # longer names keep their first characters and end in a hash
DONE, FAILED, INTERRUPTED, PENDING, RUNNING = "done", "failed", "interrupted", "pending", "running"
# Child output lines that mean the run reached its final step (train.py prints them).
_FINISHED = re.compile(r"^(final eval|run already complete; eval) at step (\d+)", re.M)


class SweepError(ValueError):
    """A bad study, flag or sweep directory; `main` prints it as one `error:` line and exits 2."""


# ----------------------------------------------------------------------------------------------------
# Studies
# ----------------------------------------------------------------------------------------------------


@dataclass
class Study:
    path: str
    name: str
    base_config: str  # as the study writes it: "configs/x.py[:arg]"
    root: str  # the directory the base config path is relative to; runs start there
    overrides: dict
    compare_within: tuple
    generators: dict  # sweep name -> generator function
    doc: str = ""


def load_study(path: str) -> Study:
    if not os.path.isfile(path):
        raise SweepError(f"study file {path!r} does not exist; pass experiments/<study>.py")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"inception_jax_study_{name}", path)
    module = importlib.util.module_from_spec(spec)
    # Like a script, a study can import its neighbours (shared scales in experiments/regimes.py).
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in the study file is the user's to fix
        raise SweepError(f"study file {path} failed to load: {type(e).__name__}: {e}") from None
    finally:
        sys.path.pop(0)
    base = getattr(module, "BASE_CONFIG", None)
    if not isinstance(base, str):
        raise SweepError(f"{path} must set BASE_CONFIG = \"configs/<file>.py[:arg]\" (the config every run starts from)")
    generators = {n[len("sweep_"):]: f for n, f in vars(module).items() if n.startswith("sweep_") and callable(f)}
    if callable(getattr(module, "sweep", None)):
        generators[""] = module.sweep
    overrides = dict(getattr(module, "OVERRIDES", {}))
    _check_keys(overrides, f"{path}: OVERRIDES")
    return Study(os.path.abspath(path), name, base, _config_root(path, base), overrides,
                 tuple(getattr(module, "COMPARE_WITHIN", ())), generators, (module.__doc__ or "").strip())


def _config_root(study_path: str, base_config: str) -> str:
    """The directory the base config path is relative to: the study's own, or the nearest one above it
    (so `experiments/x.py` can write `configs/digits.py`)."""
    file = _config_file(base_config)
    if os.path.isabs(file):
        if not os.path.isfile(file):
            raise SweepError(f"BASE_CONFIG file {file!r} does not exist")
        return os.path.dirname(os.path.abspath(study_path))
    here = os.path.dirname(os.path.abspath(study_path))
    while True:
        if os.path.isfile(os.path.join(here, file)):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            raise SweepError(f"BASE_CONFIG {file!r} is not found next to {study_path} or in a directory above it")
        here = parent


def _config_file(base_config: str) -> str:
    return base_config.split(".py:", 1)[0] + ".py" if ".py:" in base_config else base_config


def _check_keys(overrides: dict, where: str) -> None:
    for key in overrides:
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            raise SweepError(f"{where}: {key!r} is not a dotted config key such as 'model.naive'")


def expand(study: Study, sweeps: list[str]) -> list[dict]:
    """The runs' overrides: one sweep's dicts, or the product of several named sweeps' dicts."""
    names = sweeps or [""]
    for n in names:
        if n not in study.generators:
            named = ", ".join(sorted(k for k in study.generators if k)) or "none"
            what = "defines no sweep()" if n == "" else f"has no sweep_{n}()"
            raise SweepError(f"{study.path} {what}; its named sweeps: {named}")
    axes = []
    for n in names:
        items = list(study.generators[n]())
        for item in items:
            if not isinstance(item, dict):
                raise SweepError(f"sweep{'_' + n if n else ''}() yielded {item!r}; yield dicts of overrides")
            _check_keys(item, f"sweep{'_' + n if n else ''}()")
        axes.append(items)
    runs = []
    for combo in itertools.product(*axes):
        merged = {}
        for part in combo:
            clash = set(merged) & set(part)
            if clash:
                raise SweepError(f"sweeps {', '.join(names)} both set {', '.join(sorted(clash))}; "
                                 "a key may come from one sweep only")
            merged.update(part)
        runs.append(merged)
    return runs


# ----------------------------------------------------------------------------------------------------
# Names and commands
# ----------------------------------------------------------------------------------------------------


def ordered(overrides: dict) -> list[tuple[str, Any]]:
    """Keys sorted, `seed` last: the same overrides always spell the same name."""
    return sorted(overrides.items(), key=lambda kv: (kv[0] == "seed", kv[0]))


_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")
_NUMERIC = set("0123456789.+-e_")  # every character a number or a tuple of numbers is spelt with


def _spell(value) -> tuple[str, bool]:
    """(text, exact): exact when no other value of another type or content spells the same text."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return str(value), True
    if isinstance(value, float):
        return repr(value), math.isfinite(value)
    if isinstance(value, str):
        text = _UNSAFE.sub("_", value).strip("_") or "_"
        return text, text == value and not set(value) <= _NUMERIC and value not in ("True", "False", "None", "inf", "nan")
    if isinstance(value, tuple) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        parts = [_spell(v) for v in value]  # (1, 1, 1) -> 1_1_1; (0.4,) -> 0.4_; () -> _
        return "_".join(p for p, _ in parts) + ("_" if len(value) < 2 else ""), all(e for _, e in parts)
    return _UNSAFE.sub("_", str(value)), False


def run_name(overrides: dict) -> str:
    """A readable directory name spelt from the overrides, e.g. `model.naive=True,seed=0`.

    Deterministic and unique: a value the name cannot spell exactly (`train[:10%]`, a string that
    reads as a number) or a name over MAX_NAME characters adds a hash of the overrides."""
    if not overrides:
        return "base"
    pairs = [(k, *_spell(v)) for k, v in ordered(overrides)]
    text = ",".join(f"{k}={s}" for k, s, _ in pairs)
    if all(exact for _, _, exact in pairs) and len(text) <= MAX_NAME:
        return text
    digest = hashlib.sha256(json.dumps(_jsonable(overrides), sort_keys=True).encode()).hexdigest()[:8]
    return f"{text[:MAX_NAME - 9]}-{digest}"


def setting_of(overrides: dict) -> dict:
    """A run's setting: its overrides without the seed (runs of one setting differ only in seed)."""
    return {k: v for k, v in overrides.items() if k != "seed"}


def flag_value(value) -> str:
    """A Python value as `--config.x=` text that ml_collections parses back to the same value."""
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        inner = ", ".join(repr(v) if isinstance(v, str) else flag_value(v) for v in value)
        if isinstance(value, list):
            return f"[{inner}]"
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value) if isinstance(value, float) else str(value)


def parse_extra_flags(argv: list[str], swept: Iterable[str]) -> dict[str, str]:
    """`--config.x=y` flags given to the sweep: {"x": "y"}, for every run."""
    extras = {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not key.startswith("--config.") or not eq:
            hint = " (write --config.x=y with an '=')" if key.startswith("--config.") else ""
            raise SweepError(f"unexpected argument {arg!r}{hint}; the sweep takes its own options and "
                             "--config.x=y overrides for every run")
        extras[key[len("--config."):]] = value
    _check_keys(extras, "command line")
    clash = sorted(set(extras) & set(swept))
    if clash:
        raise SweepError(f"--config.{clash[0]} is swept by the study; a flag for every run cannot set it too")
    return extras


def config_flags_of(study: Study, extras: dict[str, str], overrides: dict) -> list[str]:
    """The `--config=...` and `--config.x=y` flags of one run: study OVERRIDES, then the command line's
    flags (which win over OVERRIDES), then the run's own overrides."""
    values = {k: flag_value(v) for k, v in study.overrides.items()}
    values.update(extras)
    values.update({k: flag_value(v) for k, v in ordered(overrides)})
    return [f"--config={study.base_config}"] + [f"--config.{k}={v}" for k, v in values.items()]


def train_argv(flags_: list[str], workdir: str) -> list[str]:
    """What follows the interpreter: `-m inception_jax.main <flags> --workdir=...`."""
    return ["-m", "inception_jax.main", *flags_, f"--workdir={workdir}"]


# ----------------------------------------------------------------------------------------------------
# Validation: parse every run's flags as `main` does, then the trainer's own checks
# ----------------------------------------------------------------------------------------------------


def parse_config(flags_: list[str], root: str):
    """Parses flags with the same `config_flags` definition `main` uses; returns the ConfigDict."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["main"] + [f if not f.startswith("--config=") else f"--config={_at(root, f[9:])}" for f in flags_]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=False,
                                    accept_new_attributes=True, sys_argv=argv)
    try:
        values(argv)
    except (flags.Error, KeyError, ValueError, TypeError, OSError) as e:
        raise SweepError(" ".join(str(e).split())) from None
    return values.config


def _at(root: str, base_config: str) -> str:
    return base_config if os.path.isabs(_config_file(base_config)) else os.path.join(root, base_config)


@dataclass
class Run:
    index: int
    name: str
    overrides: dict
    argv: list[str]
    total_steps: int | None = None
    num_classes: int | None = None
    params: int | None = None
    gmacs: float | None = None
    record: dict = field(default_factory=dict)  # the manifest entry (status, exit code, ...)


def plan(study: Study, overrides: list[dict], extras: dict[str, str], sweep_dir: str, *,
         need_data: bool) -> list[Run]:
    """Every run, validated before anything trains. `need_data=False` (dry run, SLURM script) lets an
    unreadable dataset through: the data may live only on the cluster."""
    from inception_jax import costs, validation

    names = [run_name(o) for o in overrides]
    seen = {}
    for o, n in zip(overrides, names):
        if n in seen:
            raise SweepError(f"the study yields the same run twice: {seen[n]} (run names must differ)")
        seen[n] = o
    runs, datasets, models = [], {}, {}
    for i, (o, n) in enumerate(zip(overrides, names)):
        flags_ = config_flags_of(study, extras, o)
        try:
            config = validation.validated(parse_config(flags_, study.root))
        except (SweepError, validation.ConfigError) as e:
            raise SweepError(f"run {n}: {e}") from None
        run = Run(i, n, o, train_argv(flags_, os.path.join(sweep_dir, n)),
                  total_steps=config.total_steps if config.total_steps > 0 else None)
        data_key = (config.dataset.name, config.dataset.data_dir, config.dataset.train_split,
                    config.dataset.eval_split)
        if data_key not in datasets:
            datasets[data_key] = _num_classes(config, need_data)
        run.num_classes = datasets[data_key]
        if run.num_classes is not None:
            model_key = json.dumps([_jsonable(dict(config.model)), config.input.image_size,
                                    list(config.aux_loss_weights), run.num_classes], sort_keys=True)
            if model_key not in models:
                net = costs.build(dict(config.model), run.num_classes)
                try:
                    validation.check_model_against_config(config, net, config.input.image_size)
                except validation.ConfigError as e:
                    raise SweepError(f"run {n}: {e}") from None
                models[model_key] = costs.count(net, config.input.image_size)
            run.params, macs = models[model_key]
            run.gmacs = macs / 1e9
        runs.append(run)
    return runs


def _num_classes(config, need_data: bool) -> int | None:
    if config.model.get("num_classes") is not None:
        return int(config.model.num_classes)
    from inception_jax.data import pipeline  # TensorFlow: only when a run's class count is needed

    try:
        return pipeline.dataset_info(config).num_classes
    except (ValueError, FileNotFoundError) as e:
        if need_data:
            raise SweepError(" ".join(str(e).split())) from None
        print(f"note: dataset {config.dataset.name!r} is not readable here ({type(e).__name__}); "
              "parameter and MAC counts are left out", file=sys.stderr)
        return None


# ----------------------------------------------------------------------------------------------------
# The manifest
# ----------------------------------------------------------------------------------------------------


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def read_manifest(sweep_dir: str) -> dict | None:
    """The manifest of `sweep_dir` as a dict (for notebooks too), or None if there is none."""
    path = os.path.join(sweep_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_manifest(sweep_dir: str, manifest: dict) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    manifest["updated"] = _now()
    fd, tmp = tempfile.mkstemp(dir=sweep_dir, prefix=".sweep-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    os.replace(tmp, os.path.join(sweep_dir, MANIFEST))


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def identity(study: Study, sweeps: list[str], extras: dict[str, str]) -> dict:
    """What makes two invocations the same sweep. Runs may be added or removed (more seeds), but a
    different base, OVERRIDES or command-line flags would mix incomparable runs in one directory."""
    return {"study": study.name, "base_config": study.base_config, "overrides": _jsonable(study.overrides),
            "sweeps": sweeps, "flags": dict(sorted(extras.items()))}


def new_manifest(study: Study, sweeps: list[str], extras: dict[str, str], command: list[str]) -> dict:
    return {"format": 1, "created": _now(), "updated": None, **identity(study, sweeps, extras),
            "study_file": study.path, "compare_within": list(study.compare_within),
            "command": shlex.join(command), "root": study.root, "python": sys.executable, "runs": []}


def merge_runs(manifest: dict, runs: list[Run], sweep_dir: str) -> None:
    """Brings the manifest's run list in line with the study, keeping each known run's record."""
    old = {r["name"]: r for r in manifest.get("runs", [])}
    entries = []
    for run in runs:
        rec = old.get(run.name) or {"status": PENDING, "exit_code": None, "error": None, "wall_time_s": 0.0,
                                    "attempts": 0, "started": None, "finished": None, "commit": None}
        if rec["status"] == RUNNING:  # the sweep that ran it died
            rec["status"] = INTERRUPTED
        rec.update(index=run.index, name=run.name, overrides=_jsonable(run.overrides),
                   setting=run_name(setting_of(run.overrides)), workdir=run.name,
                   log=os.path.join(LOG_DIR, run.name + ".log"), argv=run.argv, total_steps=run.total_steps,
                   num_classes=run.num_classes, params=run.params, gmacs=run.gmacs)
        if rec["status"] != DONE and finished_on_disk(os.path.join(sweep_dir, run.name), run.total_steps):
            rec.update(status=DONE, exit_code=0, error=None)  # e.g. finished by a SLURM array task
        run.record = rec
        entries.append(rec)
    manifest["runs"] = entries


def finished_on_disk(workdir: str, total_steps: int | None) -> bool:
    """Whether metrics.jsonl holds the final eval (an eval record at the last step)."""
    if not total_steps:
        return False
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            return any(r.get("step") == total_steps and "eval/top1" in r for r in map(_loads, f))
    except OSError:
        return False


def _loads(line: str) -> dict:
    try:
        return json.loads(line)
    except ValueError:
        return {}


def _commit() -> str | None:
    """The git commit of the code the runs use (this package's checkout), `+dirty` when tracked files
    differ from it; None outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


# ----------------------------------------------------------------------------------------------------
# Running locally
# ----------------------------------------------------------------------------------------------------


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
        slots.append(cpus[start:start + n])
        start += n
    return slots


def child_env(cpus: list[int] | None) -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if cpus is not None:
        n = str(len(cpus))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                    "TF_NUM_INTEROP_THREADS"):
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


def run_local(runs: list[Run], manifest: dict, sweep_dir: str, *, parallel: int, python: str,
              lock_fd: int, out=sys.stdout) -> int:
    """Runs what is not finished, `parallel` at a time; returns the number of failed runs."""
    todo = [r for r in execution_order(runs) if r.record["status"] not in (DONE, FAILED)]
    slots = cpu_slots(parallel)
    free = list(range(len(slots)))
    active: list[_Active] = []
    os.makedirs(os.path.join(sweep_dir, LOG_DIR), exist_ok=True)
    total, started, forwarded = len(todo), 0, 0
    where = ", ".join("all CPUs" if s is None else "CPU " + ",".join(map(str, s)) for s in slots)
    print(f"{len(runs)} runs: {sum(r.record['status'] == DONE for r in runs)} done, "
          f"{sum(r.record['status'] == FAILED for r in runs)} failed earlier, {total} to run, "
          f"{len(slots)} at a time ({where})", file=out, flush=True)
    with _Stop() as stop:
        while (todo and not stop.count) or active:
            while todo and free and not stop.count:
                run, slot = todo.pop(0), free.pop(0)
                started += 1
                # The commit each run starts from: code edited while a sweep runs shows as another commit
                # or as +dirty on the runs started after the edit.
                active.append(_start(run, slots[slot], slot, sweep_dir, manifest["root"], python, lock_fd, _commit()))
                write_manifest(sweep_dir, manifest)
                print(f"[{started}/{total}] start {run.name}" + (f" (CPU {','.join(map(str, slots[slot]))})"
                      if slots[slot] else ""), file=out, flush=True)
            if stop.count > forwarded:
                if forwarded == 0:
                    print(f"stopping: passing signal {stop.signum} to {len(active)} run(s), which save a checkpoint "
                          "(Ctrl-C again to stop them at once)", file=out, flush=True)
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
                detail = {DONE: _final_metric(sweep_dir, a.run), INTERRUPTED: "re-run the sweep to resume",
                          FAILED: f"exit {rec['exit_code']}: {rec['error']}"}[rec["status"]]
                print(f"  {rec['status']:<11} {a.run.name} after {time.monotonic() - a.t0:.0f} s: {detail}",
                      file=out, flush=True)
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
    log.write(f"\n=== attempt {rec['attempts'] + 1} at {_now()}: {shlex.join([python, *run.argv])}\n")
    log.flush()
    # Own session: a terminal's Ctrl-C reaches only the sweep, which passes it on exactly once.
    # The lock descriptor is inherited, so DIR stays locked while any run of this sweep is alive.
    proc = subprocess.Popen([python, *run.argv], cwd=root,
                            env=child_env(cpus), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=(lock_fd,))
    if cpus is not None:  # right after exec, before the child has started any thread
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(proc.pid, cpus)
    rec.update(status=RUNNING, attempts=rec["attempts"] + 1, started=rec["started"] or _now(),
               commit=rec["commit"] or commit)
    return _Active(run, proc, slot, time.monotonic(), log, log.tell())


def _finish(a: _Active, sweep_dir: str) -> None:
    a.log.close()
    rec = a.run.record
    with open(os.path.join(sweep_dir, rec["log"]), errors="replace") as f:
        f.seek(a.log_start)
        output = f.read()
    code = a.proc.returncode
    rec["wall_time_s"] = round(rec["wall_time_s"] + time.monotonic() - a.t0, 1)
    rec["finished"] = _now()
    finished = (code == 0 and _FINISHED.search(output)) or finished_on_disk(
        os.path.join(sweep_dir, a.run.name), a.run.total_steps)
    if finished:
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
    try:
        with open(os.path.join(sweep_dir, run.name, "metrics.jsonl")) as f:
            evals = [r for r in map(_loads, f) if "eval/top1" in r]
    except OSError:
        return ""
    return f"eval/top1 {evals[-1]['eval/top1']:.4f}" if evals else ""


@contextlib.contextmanager
def _locked(sweep_dir: str):
    """One sweep (and its runs) per directory at a time."""
    fd = os.open(os.path.join(sweep_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SweepError(f"another sweep, or a run it started, is still running in {sweep_dir}; wait for it "
                         "or stop it first") from None
    try:
        yield fd
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------
# SLURM
# ----------------------------------------------------------------------------------------------------


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
    options = [f"--job-name={manifest['study']}", f"--array={array}", f"--nodes={args.nodes}",
               "--ntasks-per-node=1", f"--time={args.time}",
               f"--output={os.path.join(sweep_dir, LOG_DIR, 'slurm-%A_%a.log')}",
               # SIGTERM two minutes before the time limit: the trainer saves and exits 0; re-submit resumes.
               "--signal=TERM@120"]
    if args.partition:
        options.append(f"--partition={args.partition}")
    if args.gpus:
        options.append(f"--gpus-per-node={args.gpus}")
    if args.cpus_per_task:
        options.append(f"--cpus-per-task={args.cpus_per_task}")
    if args.mem:
        options.append(f"--mem={args.mem}")
    options += args.sbatch_option
    lines = ["#!/bin/bash",
             f"# Written by `{manifest['command']}`.",
             f"# Submit with `sbatch {os.path.join(sweep_dir, SBATCH)}`. Array task i runs run i of",
             f"# {os.path.join(sweep_dir, MANIFEST)}; only runs not yet done are in the array.",
             *[f"#SBATCH {o}" for o in options],
             "set -euo pipefail",
             f"cd {shlex.quote(manifest['root'])}",
             f"PYTHON=${{PYTHON:-{shlex.quote(manifest['python'])}}}",
             'case "${SLURM_ARRAY_TASK_ID:-}" in']
    for run in todo:
        lines.append(f"  {run.index}) ARGS=({shlex.join(run.argv[2:])}) ;;  # {run.name}")
    lines += ['  *) echo "error: no run $SLURM_ARRAY_TASK_ID in this array" >&2; exit 2 ;;', "esac",
              # One process per node; a run whose process fails is ended on every node (no peer waits forever).
              'exec srun --ntasks-per-node=1 --kill-on-bad-exit=1 "$PYTHON" -m inception_jax.main "${ARGS[@]}"', ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2, as every other bad input
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        allow_abbrev=False, prog="python -m inception_jax.sweep", description=__doc__.splitlines()[0],
        epilog="Any --config.x=y flag applies to every run and is part of the sweep's identity: a sweep "
               "directory refuses a command whose flags differ from the ones it was started with.")
    p.add_argument("study", help="a study file, e.g. experiments/module_design.py")
    p.add_argument("--workdir", required=True, help="the sweep directory: one workdir per run, the manifest, logs")
    p.add_argument("--sweep", default="", help="comma-separated named sweeps (sweep_<name>() in the study); "
                                               "runs their product. Default: sweep()")
    p.add_argument("--parallel", type=int, default=1, help="runs at once, each pinned to its own share of the CPUs")
    p.add_argument("--dry-run", action="store_true", help="validate and print the runs and their commands; write nothing")
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
    g.add_argument("--sbatch-option", action="append", default=[], metavar="OPT",
                   help="any other sbatch option, e.g. --sbatch-option=--account=abc (repeatable)")
    return p


def main(argv: list[str] | None = None, out=sys.stdout) -> int:
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
        manifest = new_manifest(study, sweeps, extras, ["python", "-m", "inception_jax.sweep", *argv])
    manifest.update(root=study.root, python=sys.executable, study_file=study.path,
                    compare_within=list(study.compare_within))
    merge_runs(manifest, runs, sweep_dir)
    if args.retry_failed:
        for run in runs:
            if run.record["status"] == FAILED:
                run.record["status"] = INTERRUPTED if os.path.isdir(os.path.join(sweep_dir, run.name)) else PENDING

    if args.dry_run:
        _print_plan(runs, manifest, out)
        return 0
    os.makedirs(os.path.join(sweep_dir, LOG_DIR), exist_ok=True)
    with _locked(sweep_dir) as lock_fd:
        if args.slurm:
            path = os.path.join(sweep_dir, SBATCH)
            with open(path, "w") as f:
                f.write(sbatch_script(manifest, runs, sweep_dir, args))
            write_manifest(sweep_dir, manifest)
            todo = sum(r.record["status"] != DONE for r in runs)
            print(f"wrote {path} ({todo} array task(s)) and {os.path.join(sweep_dir, MANIFEST)}; "
                  f"submit with: sbatch {path}", file=out)
            return 0
        write_manifest(sweep_dir, manifest)
        failed = run_local(runs, manifest, sweep_dir, parallel=args.parallel, python=sys.executable,
                           lock_fd=lock_fd, out=out)
    return 1 if failed else 0


def _check_identity(manifest: dict, want: dict, sweep_dir: str) -> None:
    have = {k: manifest.get(k) for k in want}
    diff = [k for k in want if json.dumps(have[k], sort_keys=True) != json.dumps(_jsonable(want[k]), sort_keys=True)]
    if diff:
        k = diff[0]
        raise SweepError(f"{sweep_dir} holds another sweep ({k}: {have[k]!r} there, {_jsonable(want[k])!r} in "
                         f"this command; it was started by `{manifest.get('command')}`). Use another --workdir, "
                         "or repeat that command to continue it")


def _print_plan(runs: list[Run], manifest: dict, out) -> None:
    print(f"study {manifest['study']} ({manifest['study_file']}): {len(runs)} runs, base "
          f"{manifest['base_config']}, run from {manifest['root']}", file=out)
    for run in runs:
        rec = run.record
        cost = f", {run.params:,} params, {run.gmacs:.4f} GMACs" if run.params is not None else ""
        steps = f"{run.total_steps} steps" if run.total_steps else "steps from num_epochs"
        print(f"[{run.index}] {run.name}: {rec['status']}, {steps}{cost}\n    "
              f"{shlex.join(['python', *run.argv])}", file=out)


if __name__ == "__main__":
    sys.exit(main())
