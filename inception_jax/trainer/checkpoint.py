"""Checkpoints with orbax: asynchronous saves, keep the last K, resume from the newest good one.

Resume order (as big_vision): the workdir's own latest checkpoint, else `config.init_from` weights (a
converted `.msgpack` or another run's workdir), else from scratch. A checkpoint that fails to restore
(torn or corrupt) is reported and skipped for the previous one. Every process takes part in every save
and restore, as multi-host orbax needs, and all resume from the same step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from inception_jax.trainer import finetune, parallel

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


def host_copy(tree):
    """This process's copy of a pytree: numpy for replicated leaves, sharded leaves left as they are.

    Saving numpy rather than device arrays lets orbax write each replicated leaf once instead of
    compiling a slicing program per leaf shape to pick a replica (hundreds of compiles for an
    Inception tree), and no buffer the next (donating) train step reuses is touched after this
    returns. A leaf split over the mesh has no full copy on any one process; orbax writes it shard by
    shard from the `jax.Array` (copied first, so donation cannot delete it mid-save).
    """

    def leaf(x):
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return x.copy()

    return jax.tree.map(leaf, tree)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions); earlier checkpoints are untouched."""


class CorruptCheckpointError(ValueError):
    """A checkpoint's contents do not match the digest recorded when it was saved."""


def state_digest(host_tree) -> str:
    """CRC-32 over every host-local leaf's path, dtype, shape and bytes, in tree order.

    Stored in the checkpoint's metadata at save time and checked on restore, so a garbled array file
    is caught even where the storage format itself has no checksum. Leaves sharded over several
    processes (left as `jax.Array` by `host_copy`) are not covered: no process holds all their bytes.
    """
    crc = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(host_tree)[0]:
        if isinstance(leaf, jax.Array):
            continue
        a = np.ascontiguousarray(leaf)
        crc = zlib.crc32(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}".encode(), crc)
        crc = zlib.crc32(a.view(np.uint8).reshape(-1) if a.size else b"", crc)
    return f"crc32:{crc:08x}"


def abstract_like(tree, shardings):
    """`ShapeDtypeStruct`s carrying the target shardings: what orbax restores onto (any device count)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with the resume policy above."""

    def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # a save torn by a kill leaves a tmp dir; never read it
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self.skipped: list[int] = []  # steps restore_latest found unreadable, newest first
        self._failed = False

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
        """Starts an asynchronous save of the (replicated) state; returns once it is copied to host.

        A failure of this or of the previous (asynchronous) save raises `CheckpointWriteError`.
        """
        host = host_copy(state)
        meta = {**meta, "digest": state_digest(host)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta))
        with self._reporting_write_errors(step):
            return self.manager.save(int(step), args=args, force=force)

    @contextlib.contextmanager
    def _reporting_write_errors(self, step: int | None):
        try:
            yield
        except Exception as e:
            if isinstance(e, CheckpointWriteError):
                raise
            self._failed = True
            which = f"at step {step} " if step is not None else ""
            try:
                kept = [s for s in self.manager.all_steps() if s != step]
            except Exception:  # the directory itself may be unreadable
                kept = []
            raise CheckpointWriteError(
                f"writing a checkpoint {which}to {self.directory} failed ({type(e).__name__}: "
                f"{_first_line(e)}); the earlier checkpoints (steps {kept}) are intact. Free disk space or "
                "fix the directory's permissions, then re-run the same command to resume."
            ) from e

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_latest(self, abstract_state):
        """Returns `(step, state, meta)` from the newest checkpoint every process restores, or None.
        Processes try the steps process 0 lists, in that order, and take one only when all of them
        restored it (`parallel.all_processes`).

        `abstract_state` may be a dataclass (the trainer's `TrainState`): fields that a checkpoint
        written by an older version lacks come back as None for the caller to fill in.
        """
        for step in parallel.from_process_zero(sorted(self.manager.all_steps(), reverse=True)):
            try:
                state, meta = self._restore(step, abstract_state)
                problem = None
            except Exception as e:  # orbax raises many types for torn/garbled files
                state = meta = None
                problem = f"{type(e).__name__}: {_first_line(e)}"
            if not parallel.all_processes(problem is None):
                log.warning(
                    "checkpoint at step %d in %s cannot be restored (%s); trying an older one",
                    step,
                    self.directory,
                    problem or "another process could not read it",
                )
                self.skipped.append(step)
                continue
            return step, state, meta
        return None

    def _restore(self, step: int, abstract_state):
        target, missing = abstract_state, []
        if dataclasses.is_dataclass(abstract_state):
            saved = self.manager.item_metadata(step)["state"].tree
            fields = [f.name for f in dataclasses.fields(abstract_state)]
            missing = [name for name in fields if name not in saved]
            if missing:  # restore what the checkpoint has, as the dict orbax stored the dataclass as
                target = {name: getattr(abstract_state, name) for name in fields if name not in missing}
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        )
        state, meta = restored["state"], dict(restored["meta"])
        if missing:  # the dataclass again, with None (no leaves: the digest sees the saved tree) for the rest
            state = abstract_state.replace(**state, **{name: None for name in missing})
        _check_digest(state, meta)
        return state, meta

    def wait(self) -> None:
        """Blocks until the pending save is on disk; raises `CheckpointWriteError` if it failed."""
        with self._reporting_write_errors(None):
            self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the pending save and releases the manager (a failure is raised once, not twice)."""
        try:
            if not self._failed:
                self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:
                if not self._failed:
                    raise


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _check_digest(state, meta: dict) -> None:
    expected = meta.get("digest")
    if expected is None:  # written before digests existed: nothing to compare
        return
    actual = state_digest(host_copy(state))  # this process's replica, as at save time (multi-host safe)
    if actual != expected:
        raise CorruptCheckpointError(f"contents digest {actual} differs from the {expected} recorded at save time")


def load_init_variables(path: str) -> dict:
    """Reads `params`/`batch_stats` from a converted weight file or another run's checkpoint.

    Accepts a `.msgpack` written by `inception-convert`, a workdir, or its
    `checkpoints/` directory (the newest step is used). Returns numpy trees.
    """
    from inception_jax.weights import load_variables

    if os.path.isfile(path):
        _, variables = load_variables(path)
        return {k: variables.get(k, {}) for k in ("params", "batch_stats")}
    state, _ = _newest_state(path, "config.init_from")
    return {k: jax.tree.map(np.asarray, state[k]) for k in ("params", "batch_stats")}


def load_eval_variables(workdir: str, *, ema: bool) -> tuple[dict, int]:
    """The variables a run evaluates with at its newest checkpoint (the EMA ones when it keeps them), as
    numpy trees `{"params", "batch_stats"}`, and that checkpoint's step."""
    state, step = _newest_state(workdir, "--workdir")
    if ema and state.get("ema_params"):
        variables = {"params": state["ema_params"], "batch_stats": state.get("ema_batch_stats") or {}}
    else:
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    return jax.tree.map(np.asarray, variables), step


def read_label_names(workdir: str) -> tuple[str, ...] | None:
    """The class names the newest checkpoint records (runs on an image folder), else None."""
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        return None
    manager = ocp.CheckpointManager(
        directory, item_names=("state", "meta"), options=ocp.CheckpointManagerOptions(read_only=True)
    )
    step = manager.latest_step()
    meta = {} if step is None else manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    manager.close()
    names = (meta or {}).get("label_names")
    return tuple(names) if names else None


def _newest_state(path: str, field: str) -> tuple[dict, int]:
    """The newest checkpoint's state (a dict of numpy arrays) under a workdir or its `checkpoints/`."""
    directory = path
    if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
        directory = os.path.join(path, CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"{field}={path!r} is neither a weight file nor a run directory; pass a .msgpack "
            "from `inception-convert` or a previous run's workdir"
        )
    manager = ocp.CheckpointManager(
        directory, item_names=("state", "meta"), options=ocp.CheckpointManagerOptions(read_only=True)
    )
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"{field}={path!r} holds no checkpoint")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return restored["state"], int(step)


def merge_init_variables(target: dict, loaded: dict) -> tuple[dict, list[str]]:
    """Copies `loaded` leaves into `target` where shapes agree.

    Leaves that differ in shape are kept freshly initialised, but only in the head (the classifier and
    the aux heads, `finetune.is_head`: a new class count); any other difference is an error. Returns
    (merged, reinitialised).
    """
    flat_t = traverse_util.flatten_dict(target)
    flat_l = traverse_util.flatten_dict(loaded)
    missing = sorted("/".join(k) for k in flat_t if k not in flat_l)
    if missing:
        raise ValueError(
            f"config.init_from lacks {len(missing)} variables of this model, e.g. {missing[:5]}; "
            "was it made for another variant or other model options?"
        )
    merged, reinit, bad = {}, [], []
    for k, v in flat_t.items():
        src = flat_l[k]
        if tuple(src.shape) == tuple(v.shape):
            merged[k] = np.asarray(src, dtype=v.dtype)
        elif finetune.is_head(k[1]):  # k = (collection, top-level module, ...)
            merged[k] = v
            reinit.append("/".join(k))
        else:
            bad.append(f"{'/'.join(k)}: file {tuple(src.shape)} vs model {tuple(v.shape)}")
    if bad:
        raise ValueError("config.init_from does not fit this model: " + "; ".join(bad[:5]))
    return traverse_util.unflatten_dict(merged), reinit
