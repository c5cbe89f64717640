"""Data parallelism over every device of every process, with today's JAX API.

The pmap model (per-device batch, gradients averaged) as `jax.jit` over a one-axis `Mesh`, plus
`jax.shard_map` where a step needs per-device semantics (BatchNorm statistics); no `jax.pmap`. Processes
join one mesh through `jax.distributed`, which finds its peers under SLURM, Open MPI and Cloud TPU; this
module decides whether to join (`initialize_distributed`) and holds the few agreements between processes:
each one's rows of the global batch (`process_rows`), a shared stop (`StopVote`), `all_processes`.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import threading
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
DISTRIBUTED_MODES = ("auto", "on", "off")


# --------------------------------------------------------------------------------------------------
# Joining a cluster
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How this process joins a cluster; None fields are left to JAX's own cluster detection."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    launcher: str = "explicit"  # "explicit" (flags / JAX_* variables), "slurm", "openmpi", "cloud_tpu", "forced"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


def detect_launcher() -> str | None:
    """The multi-process launcher this process runs under, judged from its environment; None if none.

    Only launches of more than one process count: a single SLURM task or MPI rank runs on its own,
    and never waits for a peer. The variables are those JAX's cluster detection reads.
    """
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(v in os.environ for v in slurm) and (_env_int("SLURM_NTASKS") or 1) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in os.environ and (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "openmpi"
    hosts = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "cloud_tpu"
    return None


def _expand_slurm_counts(text: str) -> list[int]:
    """SLURM's compressed per-node counts, e.g. "2(x3),1" -> [2, 2, 2, 1]."""
    counts = []
    for part in filter(None, text.split(",")):
        value, _, repeat = part.partition("(x")
        counts += [int(value)] * (int(repeat.rstrip(")")) if repeat else 1)
    return counts


def processes_on_this_host(launcher: str | None) -> int | None:
    """How many processes of the job run on this host, as the launcher tells it (None if unknown)."""
    if launcher == "slurm":
        per_node = os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE") or ""
        node = _env_int("SLURM_NODEID")
        counts = _expand_slurm_counts(per_node) if per_node else []
        return counts[node] if node is not None and node < len(counts) else None
    if launcher == "openmpi":
        return _env_int("OMPI_COMM_WORLD_LOCAL_SIZE")
    return None


def local_device_ids(launcher: str | None) -> list[int] | None:
    """The GPUs this process should use, where JAX's own choice would be wrong; None keeps JAX's.

    Under SLURM and Open MPI, JAX gives each process the single GPU numbered by its local rank, which
    is right for one process per GPU but leaves 7 of 8 GPUs idle with one process per host (the usual
    `srun --ntasks-per-node=1`). With one process on this host, it gets every GPU the launcher gave it
    (`CUDA_VISIBLE_DEVICES`, else `SLURM_GPUS_ON_NODE`).
    """
    if launcher not in ("slurm", "openmpi") or processes_on_this_host(launcher) != 1:
        return None
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    count = len(visible) or _env_int("SLURM_GPUS_ON_NODE") or 0
    return list(range(count)) if count > 1 else None


def cluster_spec(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    mode: str = "auto",
) -> ClusterSpec | None:
    """Whether and how to join a cluster: None means "run as a single process".

    Explicit values (flags) come first, then `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
    `JAX_PROCESS_ID`; with none of them, `mode="auto"` joins when `detect_launcher` finds a
    multi-process launch, `"on"` always asks JAX to detect the cluster (a Cloud TPU pod whose workers
    are only known to the metadata server), `"off"` never joins.
    """
    if mode not in DISTRIBUTED_MODES:
        raise ValueError(f"--distributed={mode!r} is not one of {', '.join(DISTRIBUTED_MODES)}")
    if mode == "off":
        return None
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    count = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if address or count is not None or index is not None:
        missing = [
            name
            for name, v in (("--coordinator_address", address), ("--num_processes", count), ("--process_id", index))
            if v is None
        ]
        if missing:
            raise ValueError(
                f"joining a cluster by hand needs --coordinator_address, --num_processes and --process_id "
                f"(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); missing: {', '.join(missing)}. "
                "Under SLURM, Open MPI or on a Cloud TPU pod, set none of them: JAX finds its peers."
            )
        if not 0 <= index < count:
            raise ValueError(f"--process_id={index} must be in [0, --num_processes={count})")
        return None if count == 1 else ClusterSpec(address, count, index, "explicit")
    launcher = detect_launcher()
    if launcher is not None:
        return ClusterSpec(launcher=launcher)
    return ClusterSpec(launcher="forced") if mode == "on" else None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    mode: str = "auto",
    timeout_s: int | None = None,
) -> bool:
    """Joins the cluster `cluster_spec` describes, once per process; returns whether this is a cluster run.

    Calling it again (a second `train_and_evaluate` in a notebook) is harmless. A peer that never
    arrives ends the process with exit status 1 and a message saying who was waited for, a few seconds
    before JAX's own timeout would abort it (`timeout_s`, default `JAX_INITIALIZATION_TIMEOUT` or 300).
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    spec = cluster_spec(coordinator_address, num_processes, process_id, mode=mode)
    if spec is None:
        return False
    timeout_s = int(timeout_s or _env_int("JAX_INITIALIZATION_TIMEOUT") or 300)
    who = (
        f"process {spec.process_id} of {spec.num_processes} at {spec.coordinator_address}"
        if spec.launcher == "explicit"
        else f"a {spec.launcher} cluster (addresses from JAX's detection)"
    )
    print(f"joining {who}; waiting up to {timeout_s} s for every process", file=sys.stderr, flush=True)
    joined = threading.Event()

    def watchdog():  # JAX aborts with SIGABRT and an RPC error when a peer never comes; say it plainly first
        if not joined.wait(max(timeout_s - 2, 1)):
            print(
                f"error: {who}: not every process joined within {timeout_s} s. Start all processes with the "
                "same --coordinator_address and --num_processes (each with its own --process_id), check "
                "that process 0's host and port are reachable, or raise JAX_INITIALIZATION_TIMEOUT.",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)

    threading.Thread(target=watchdog, name="cluster-join-watchdog", daemon=True).start()
    try:
        jax.distributed.initialize(
            spec.coordinator_address,
            spec.num_processes,
            spec.process_id,
            local_device_ids=local_device_ids(spec.launcher),
            initialization_timeout=timeout_s + 30,
        )
    except RuntimeError as e:
        if "must be called before" not in str(e):  # JAX's word for a backend already in use
            raise
        raise RuntimeError(
            "cannot join a cluster: JAX was already used in this process as a single process. Start "
            "a fresh process (or notebook kernel) and call train_and_evaluate before anything else uses JAX."
        ) from None
    finally:
        joined.set()
    print(
        f"joined: process {jax.process_index()} of {jax.process_count()}, {jax.local_device_count()} local "
        f"of {jax.device_count()} devices",
        file=sys.stderr,
        flush=True,
    )
    return jax.process_count() > 1


# --------------------------------------------------------------------------------------------------
# Mesh, shardings and the global batch
# --------------------------------------------------------------------------------------------------


def make_mesh(devices=None) -> Mesh:
    """A one-dimensional mesh named `data` over all devices of all processes (process-major order)."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices.reshape(-1), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split across the mesh."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles each process's numpy batch into one globally sharded `jax.Array` per key."""
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def platform(mesh: Mesh) -> str:
    """The platform of the mesh's devices ("cpu", "gpu", "tpu")."""
    return mesh.devices.flat[0].platform


def prefetch_to_devices(local_batches: Iterable[dict], mesh: Mesh, size: int = 2) -> Iterator[dict]:
    """`global_batch` of each local batch, `size - 1` batches ahead: the next batch's host-to-device copy
    (asynchronous in JAX) is under way while the current step runs, as flax's `prefetch_to_device` did
    for pmap. Batches come out in order; stopping early only drops the ones read ahead."""
    queue: collections.deque = collections.deque()
    iterator = iter(local_batches)

    def fill():
        while len(queue) < size:
            try:
                queue.append(global_batch(next(iterator), mesh))
            except StopIteration:
                return

    fill()
    while queue:
        yield queue.popleft()
        fill()


def process_rows(mesh: Mesh, global_batch_size: int) -> tuple[int, int]:
    """The rows `[start, stop)` of a global batch that this process's devices hold.

    Read off the batch sharding itself, so the data pipeline feeds exactly the rows
    `jax.make_array_from_process_local_data` places on this process's devices; with the process-major
    mesh of `make_mesh` they are one contiguous block.
    """
    index_map = data_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    bounds = sorted(
        (s[0].start or 0, s[0].stop if s[0].stop is not None else global_batch_size) for s in index_map.values()
    )
    for (_, stop), (start, _) in zip(bounds, bounds[1:]):
        if start != stop:
            raise ValueError(f"this process's devices hold non-contiguous batch rows {bounds}; use make_mesh")
    return bounds[0][0], bounds[-1][1]


# --------------------------------------------------------------------------------------------------
# Agreement between processes
# --------------------------------------------------------------------------------------------------


def all_processes(ok: bool) -> bool:
    """True when `ok` holds on every process (a blocking collective; every process must call it)."""
    if jax.process_count() == 1:
        return bool(ok)
    return bool(np.all(multihost_utils.process_allgather(np.asarray(bool(ok)))))


def from_process_zero(values: list[int]) -> list[int]:
    """Process 0's list of integers on every process (the others' own lists are ignored)."""
    if jax.process_count() == 1:
        return [int(v) for v in values]
    n = int(multihost_utils.broadcast_one_to_all(np.asarray(len(values), np.int64)))
    if n == 0:
        return []
    padded = np.zeros((n,), np.int64)
    padded[: min(n, len(values))] = np.asarray(values[:n], np.int64)
    return [int(v) for v in np.asarray(multihost_utils.broadcast_one_to_all(padded))]


class StopVote:
    """A stop flag any process may raise (a signal), seen by every process after the same step.

    Each call of `poll(local_flag)` starts a tiny all-reduce (max over processes) and returns the
    result of the previous call's: one step late, so the host never waits for the step in flight, and
    identical on every process because every process polls once per step. One process runs alone
    and answers at once.
    """

    def __init__(self, mesh: Mesh):
        self._mesh = mesh
        self._pending: collections.deque = collections.deque()
        self._multi = jax.process_count() > 1
        if self._multi:
            self._reduce = jax.jit(jnp.max, out_shardings=replicated(mesh))

    def poll(self, local_flag: bool) -> bool:
        if not self._multi:
            return bool(local_flag)
        n_local = len(self._mesh.local_devices)
        votes = np.full((n_local,), int(bool(local_flag)), np.int32)
        self._pending.append(self._reduce(jax.make_array_from_process_local_data(data_sharding(self._mesh), votes)))
        if len(self._pending) < 2:
            return False
        return bool(self._pending.popleft())
