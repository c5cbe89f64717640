"""Data parallelism over every device of every process, with today's JAX API.

The pmap programming model (per-device batch, gradients averaged across devices) written as
`jax.jit` over a one-axis `Mesh` with `NamedSharding`, plus `jax.shard_map` where a step needs
per-device semantics (per-device BatchNorm statistics). No `jax.pmap`, no `device_put_replicated`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed() -> None:
    """Joins a multi-process cluster when the launcher says so (JAX_COORDINATOR_ADDRESS etc.).

    With `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` set (or on a managed
    cluster JAX detects itself, e.g. SLURM or Cloud TPU), all processes form one device mesh.
    A single process needs nothing.
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
            initialization_timeout=int(os.environ.get("JAX_INITIALIZATION_TIMEOUT", "300")),
        )


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


def local_batch_size(global_batch_size: int, mesh: Mesh, *, field: str = "config.batch_size") -> int:
    """This process's share of the global batch; the batch must split evenly over all devices."""
    n = mesh.devices.size
    if global_batch_size <= 0 or global_batch_size % n:
        lower = max(n, global_batch_size // n * n)
        raise ValueError(
            f"{field}={global_batch_size} must be a positive multiple of the device count {n}; "
            f"use {lower} or {lower + n}."
        )
    return global_batch_size // jax.process_count()
