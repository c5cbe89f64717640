"""What a run leaves in its workdir, and the one reader of it (the sweep, the report, notebooks, tests).

- `config.json`: the validated config, written when the run starts.
- `metrics.jsonl`: one JSON object per logged step (`step`, `train/*`, `eval/*`, `perf/*`).
- `status.json`: written when the run ends: `status` ("finished", "interrupted" or "failed"), `step`,
  `total_steps`, `exit_code`, `error`, `commit` (`+dirty` when tracked files differ), `time`.
- `environment.json`: written when the run starts: library versions, CPU, devices, XLA flags, commit.
- `sweep.json`: in a sweep's directory, the manifest of its runs (`inception_jax.tools.sweep`).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
from typing import Any

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
ENVIRONMENT_FILE = "environment.json"
MANIFEST_FILE = "sweep.json"
FINISHED, INTERRUPTED, FAILED = "finished", "interrupted", "failed"


SEED_KEY = "seed"


def setting_of(overrides: dict) -> dict:
    """A sweep run's setting: its overrides without the seed (runs of one setting differ only in seed)."""
    return {k: v for k, v in overrides.items() if k != SEED_KEY}


def ordered(overrides: dict) -> list[tuple[str, Any]]:
    """Keys sorted, `seed` last: the same overrides always spell the same name."""
    return sorted(overrides.items(), key=lambda kv: (kv[0] == "seed", kv[0]))


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def jsonable(value: Any) -> Any:
    """Config values as JSON: tuples as lists, anything else unknown (a dtype) as its repr."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def write_json(path: str, value: Any) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str) -> Any | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_jsonl(path: str) -> list[dict]:
    """Every complete JSON object of a JSON-lines file; a line torn by a kill is skipped."""
    records = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
    except OSError:
        return []
    return records


def read_config(workdir: str) -> dict | None:
    return read_json(os.path.join(workdir, CONFIG_FILE))


def read_metrics(workdir: str) -> list[dict]:
    return read_jsonl(os.path.join(workdir, METRICS_FILE))


def read_status(workdir: str) -> dict | None:
    return read_json(os.path.join(workdir, STATUS_FILE))


def is_finished(workdir: str) -> bool:
    status = read_status(workdir)
    return bool(status) and status.get("status") == FINISHED


def write_status(
    workdir: str,
    status: str,
    *,
    step: int | None,
    total_steps: int | None,
    exit_code: int = 0,
    error: str | None = None,
) -> None:
    write_json(
        os.path.join(workdir, STATUS_FILE),
        {
            "status": status,
            "step": step,
            "total_steps": total_steps,
            "exit_code": exit_code,
            "error": error,
            "commit": commit(),
            "time": now(),
        },
    )


def read_manifest(sweep_dir: str) -> dict | None:
    return read_json(os.path.join(sweep_dir, MANIFEST_FILE))


def write_manifest(sweep_dir: str, manifest: dict) -> None:
    manifest["updated"] = now()
    write_json(os.path.join(sweep_dir, MANIFEST_FILE), manifest)


def commit() -> str | None:
    """The git commit of this package's checkout, `+dirty` when tracked files differ; None outside one."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


# What a result depends on besides the config (issue 22: a reviewer must see it next to each result).
RECORDED_PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-datasets",
    "numpy",
)
# CPU features that change which kernels XLA's CPU backend emits, and so its rounding and speed.
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16")


def _cpu() -> tuple[str, list[str]]:
    """(model name, the CPU_FLAGS it has) from /proc/cpuinfo; platform's description elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields = dict(line.split(":", 1) for line in info.splitlines()[:40] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", platform.machine()), [f for f in CPU_FLAGS if f in flags]


def environment(devices=None) -> dict:
    """Versions, CPU, devices, XLA/JAX settings and the commit: what `environment.json` records."""
    import jax

    devices = list(devices if devices is not None else jax.devices())
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    cpu, flags = _cpu()
    return {
        "python": sys.version.split()[0],
        "packages": versions,
        "cpu": cpu,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "platform": devices[0].platform if devices else None,
        "device_kind": devices[0].device_kind if devices else None,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("JAX_")},
        "commit": commit(),
        "time": now(),
    }


def write_environment(workdir: str, devices=None) -> None:
    write_json(os.path.join(workdir, ENVIRONMENT_FILE), environment(devices))


def read_environment(workdir: str) -> dict | None:
    return read_json(os.path.join(workdir, ENVIRONMENT_FILE))
