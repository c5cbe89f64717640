"""The one trainer: `train_and_evaluate(config, workdir)`, importable from a notebook.

Read top to bottom, in big_vision's order: validation, cluster and mesh, data, model and optimizer,
state, checkpoint restore, steps, loop, final eval. Data parallel over every device of every process
(`jax.jit` over a one-axis mesh, or `jax.shard_map` for per-device BatchNorm statistics), with optional
gradient accumulation; every process feeds its rows of the global batch and takes part in every
checkpoint, and only process 0 writes files. Batch, BatchNorm and cluster rules: docs/training.md.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from inception_jax import kernels, losses, optim
from inception_jax.models import registry, stacking
from inception_jax.trainer import checkpoint as ckpt_lib
from inception_jax.trainer import compilation, finetune, parallel, rundir, validation
from inception_jax.trainer import metrics as metrics_lib

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pytree, donated to the step and checkpointed whole."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any  # Polyak/EMA parameter average used for eval; {} when config.ema_decay is off
    nonfinite_skips: jax.Array  # updates skipped for a NaN/Inf loss (config.on_nonfinite == "skip")
    # EMA of the BatchNorm running statistics, evaluated with ema_params (TF-slim averages its
    # moving_mean/moving_variance with the weights); {} when config.ema_decay is off. Checkpoints
    # written before it existed restore with it started from the live statistics.
    ema_batch_stats: Any


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the step and the last good checkpoint."""


# ----------------------------------------------------------------------------------------------
# Model and steps
# ----------------------------------------------------------------------------------------------


def model_options(config, num_classes: int) -> dict:
    """`config.model` as `registry.create_model` options; `num_classes` unless the config sets it."""
    options = {k: v for k, v in config.model.items() if k != "name"}
    options.setdefault("num_classes", num_classes)
    return options


def build_model(config, num_classes: int):
    return registry.create_model(config.model.name, **model_options(config, num_classes))


def init_state(model, tx, config, image_size: int, rng) -> TrainState:
    x = jnp.zeros((1, image_size, image_size, model.in_channels), jnp.float32)
    # The classic (non-partitionable) threefry compiles the hundreds of initialiser draws of an
    # Inception in well under half the time; the state is replicated, so nothing is lost.
    with jax.threefry_partitionable(False):
        variables = model.init({"params": rng, "dropout": rng}, x, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if config.ema_decay else {},
        nonfinite_skips=jnp.zeros((), jnp.int32),
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats) if config.ema_decay else {},
    )


def fill_missing_fields(state: TrainState, config) -> TrainState:
    """Completes a state restored from an older checkpoint (fields it lacks come back as None)."""
    if state.ema_batch_stats is None:
        state = state.replace(ema_batch_stats=jax.tree.map(jnp.copy, state.batch_stats) if config.ema_decay else {})
    return state


def normalise_images(images, mean, std):
    """uint8 pixels (what the input pipeline sends: a quarter of float32's bytes) -> `(x / 255 - mean) /
    std` in float32, on the device; the same formula as `preprocess.normalize`. Float batches are taken as
    already normalised and pass through."""
    if images.dtype != jnp.uint8:
        return images
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def _forward_loss(model, config, num_classes, plan, params, batch_stats, batch, rng):
    images = normalise_images(batch["image"], config.input.mean, config.input.std)
    with plan.batchnorm_context():  # fine-tuning: frozen BatchNorm layers keep their statistics
        (logits, out), new_vars = model.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
    loss, parts = losses.total_loss(
        logits,
        out["aux_logits"],
        batch["label"],
        num_classes=num_classes,
        label_smoothing=config.label_smoothing,
        aux_loss_weights=tuple(config.aux_loss_weights),
    )
    top1 = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
    # Flax keeps running statistics in float32 but updates them in the compute dtype; cast back so the
    # state's types never change between steps (a changed type would recompile the step).
    new_stats = jax.tree.map(lambda new, old: new.astype(old.dtype), new_vars.get("batch_stats", {}), batch_stats)
    return loss, (new_stats, parts, top1)


def _apply_update(state: TrainState, grads, new_batch_stats, tx, config, loss):
    """One optimizer update: `(new state, whether the step was finite, the gradient's norm)`.
    `state.step` counts the updates applied, which is also the count optax's schedule sees, so
    `schedule(state.step)` is the learning rate of the next update even after skipped (non-finite) steps."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema, ema_bs = state.ema_params, state.ema_batch_stats
    if config.ema_decay:
        ema = optim.ema_update(state.ema_params, params, config.ema_decay, state.step)
        ema_bs = optim.ema_update(state.ema_batch_stats, new_batch_stats, config.ema_decay, state.step)
    grad_norm = kernels.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=new_batch_stats,
        opt_state=opt_state,
        ema_params=ema,
        ema_batch_stats=ema_bs,
    )
    if config.on_nonfinite == "skip":  # everything stays as it was, the step count included
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        new = new.replace(nonfinite_skips=state.nonfinite_skips + (~finite).astype(jnp.int32))
    return new, finite, grad_norm


def _accumulated(loss_grad, k: int):
    """`loss_grad` over `k` micro-batches run in sequence: mean loss, metrics and gradients; BatchNorm
    statistics are threaded through, so each micro-batch is normalised by its own statistics and the
    running averages take k updates.

    Micro-batch i is rows i, i + k, i + 2k, ... of the batch: with every device's row count a multiple
    of k, each device splits its own rows, and the global and per-device steps cut the same micro-batches.
    """
    if k == 1:
        return loss_grad

    def fn(params, batch_stats, batch, rng):
        micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch)

        def one(carry, i_mb):
            i, mb = i_mb
            bs, grads = carry
            (loss, (bs, parts, top1)), g = loss_grad(params, bs, mb, jax.random.fold_in(rng, i))
            return (bs, jax.tree.map(jnp.add, grads, g)), (loss, parts, top1)

        # Gradients have the parameters' structure and dtypes; the per-micro-batch metrics come out stacked.
        init = (batch_stats, jax.tree.map(jnp.zeros_like, params))
        (bs, grads), (loss, parts, top1) = jax.lax.scan(one, init, (jnp.arange(k), micro))
        mean = lambda tree: jax.tree.map(lambda a: jnp.mean(a, 0), tree)
        return (mean(loss), (bs, mean(parts), mean(top1))), jax.tree.map(lambda g: g / k, grads)

    return fn


def _without_frozen_grads(loss_grad, plan: finetune.Plan):
    """Frozen parameters' gradients as zeros: nothing reads the real ones, so XLA never computes them."""
    if not plan.frozen:
        return loss_grad

    def fn(*args):
        value, grads = loss_grad(*args)
        return value, plan.zero_frozen(grads)

    return fn


def kernel_scope(fn, config, mesh, platform: str | None = None):
    """`fn` traced with `config.kernels` resolved for the platform the program is built for: `platform`
    ("cpu", "cuda", "rocm", "tpu"), by default that of the mesh's devices."""
    choice = kernels.for_platform(config.get("kernels", "auto"), platform or parallel.platform(mesh))

    @functools.wraps(fn)
    def scoped(*args):
        with kernels.use(choice):
            return fn(*args)

    return scoped


def make_train_step(
    model,
    tx,
    schedule,
    config,
    num_classes: int,
    mesh,
    plan: finetune.Plan | None = None,
    *,
    platform: str | None = None,
):
    """Returns the jitted `train_step(state, batch, base_rng) -> (state, metrics)`; state is donated.
    `plan` (fine-tuning) freezes blocks and BatchNorm; `tx` must already be wrapped by `plan.wrap`.
    `platform`: what to build for, when not the mesh's devices (`jax.export` for another platform)."""
    plan = plan or finetune.Plan()
    loss_grad = jax.value_and_grad(functools.partial(_forward_loss, model, config, num_classes, plan), has_aux=True)
    loss_grad = _without_frozen_grads(loss_grad, plan)
    loss_grad = _accumulated(loss_grad, int(config.get("grad_accum_steps", 1) or 1))

    def metrics_of(state, new_state, loss, parts, top1, grad_norm, finite):
        m = {
            "train/loss": loss,
            "train/top1": top1,
            "train/learning_rate": schedule(state.step),  # the rate this step's update used
            "train/grad_norm": grad_norm,
            # the parameters this step returns: the old ones' buffers are donated to them, and reading
            # those after the update makes XLA keep copies
            "train/param_norm": kernels.global_norm(new_state.params),
            "finite": finite,
        }
        m.update({f"train/loss_{k}": v for k, v in parts.items()})
        return m

    def global_step(state, batch, base_rng):
        rng = jax.random.fold_in(base_rng, state.step)
        (loss, (bs, parts, top1)), grads = loss_grad(state.params, state.batch_stats, batch, rng)
        new_state, finite, grad_norm = _apply_update(state, grads, bs, tx, config, loss)
        return new_state, metrics_of(state, new_state, loss, parts, top1, grad_norm, finite)

    def per_device_step(state, batch, base_rng):
        # Runs once per device on its slice of the batch: BatchNorm sees only the local examples,
        # as in the papers' per-replica training; gradients and statistics are then averaged.
        axis = parallel.DATA_AXIS
        rng = jax.random.fold_in(jax.random.fold_in(base_rng, state.step), jax.lax.axis_index(axis))
        (loss, (bs, parts, top1)), grads = loss_grad(state.params, state.batch_stats, batch, rng)
        grads, bs, loss, parts, top1 = jax.lax.pmean((grads, bs, loss, parts, top1), axis)
        new_state, finite, grad_norm = _apply_update(state, grads, bs, tx, config, loss)
        return new_state, metrics_of(state, new_state, loss, parts, top1, grad_norm, finite)

    if config.bn_statistics == "per_device":
        step_fn = jax.shard_map(
            per_device_step,
            mesh=mesh,
            in_specs=(P(), P(parallel.DATA_AXIS), P()),
            out_specs=(P(), P()),
            check_vma=False,
        )
    else:
        step_fn = global_step
    replicated = parallel.replicated(mesh)
    return jax.jit(
        kernel_scope(step_fn, config, mesh, platform),
        donate_argnums=(0,),
        out_shardings=(replicated, replicated),
        compiler_options=kernels.compiler_options(mesh, config.get("xla_cpu_convolutions", "eigen")),
    )


def make_eval_step(model, mesh, config, *, platform: str | None = None):
    """`eval_step(params, batch_stats, batch) -> sums`: exact counts over the unmasked examples. uint8
    images are normalised with config.input's mean and std on the device."""
    mean, std = config.input.mean, config.input.std

    def eval_step(params, batch_stats, batch):
        images = normalise_images(batch["image"], mean, std)
        logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
        logits = logits.astype(jnp.float32)
        mask = batch["mask"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        k5 = min(5, logits.shape[-1])
        return {
            "correct1": losses.topk_correct(logits, batch["label"], 1, mask),
            "correct5": losses.topk_correct(logits, batch["label"], k5, mask),
            "loss_sum": jnp.sum(jnp.where(mask, ce, 0.0)),
            "count": jnp.sum(mask.astype(jnp.int32)),
        }

    return jax.jit(
        kernel_scope(eval_step, config, mesh, platform),
        out_shardings=parallel.replicated(mesh),
        compiler_options=kernels.compiler_options(mesh, config.get("xla_cpu_convolutions", "eigen")),
    )


def evaluate(eval_step, params, batch_stats, eval_batches, mesh) -> dict[str, float]:
    """Runs over every eval example once; returns `eval/top1`, `eval/top5`, `eval/loss`, `eval/examples`."""
    totals = {"correct1": 0, "correct5": 0, "loss_sum": 0.0, "count": 0}
    for batch in parallel.prefetch_to_devices(eval_batches(), mesh):
        sums = jax.device_get(eval_step(params, batch_stats, batch))
        for k in totals:
            totals[k] += sums[k].item()
    n = max(totals["count"], 1)
    return {
        "eval/top1": totals["correct1"] / n,
        "eval/top5": totals["correct5"] / n,
        "eval/loss": totals["loss_sum"] / n,
        "eval/examples": totals["count"],
    }


# ----------------------------------------------------------------------------------------------
# Interruption handling
# ----------------------------------------------------------------------------------------------


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps (then save and exit cleanly)."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some notebook runners): no handler
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains and evaluates `config` in `workdir`, resuming from the workdir's latest checkpoint."""
    from inception_jax.trainer.data import folder, pipeline  # TF is imported only by runs that read data

    # 1. Validate everything cheap before anything expensive.
    config = validation.validated(config)
    workdir = os.path.abspath(workdir)
    validation.check_workdir(workdir)
    validation.check_resume(config, workdir)
    try:
        info = pipeline.dataset_info(config)  # unknown/unprepared datasets and bad image folders fail here
    except (ValueError, FileNotFoundError) as e:
        raise validation.ConfigError(str(e)) from None
    is_folder = folder.is_folder(config.dataset.name)
    if is_folder:
        validation.check_classes(config, workdir, info.label_names)

    # 2. Cluster (when launched as several processes), compilation cache, mesh over every device.
    parallel.initialize_distributed()
    cache_dir = compilation.configure_cache(config.compilation_cache, config.compilation_cache_dir)
    mesh = parallel.make_mesh()
    is_main = jax.process_index() == 0
    announce = functools.partial(print, flush=True) if is_main else None
    try:
        validation.check_batch_split(config, mesh.devices.size)
        train_rows = parallel.process_rows(mesh, config.batch_size)
        eval_rows = parallel.process_rows(mesh, config.eval_batch_size)
    except ValueError as e:
        raise validation.ConfigError(str(e)) from None
    if not info.random_access and jax.process_count() > 1:
        log.warning("%s has no random access: batches depend on the number of processes", info.name)

    # 3. Model, durations, optimizer.
    image_size = validation.image_size(config)
    model = build_model(config, info.num_classes)
    # Traced with the kernels of the devices' platform: "auto" outside would trace both forms.
    in_scope = functools.partial(kernel_scope, config=config, mesh=mesh)
    in_scope(validation.check_model_against_config)(config, model, image_size)
    steps_per_epoch = max(1, info.num_train_examples // config.batch_size)
    try:
        total_steps = optim.steps_from(config, steps_per_epoch)
        tx, schedule = optim.make_optimizer(config, steps_per_epoch, total_steps)
        plan = finetune.make_plan(config, model, image_size)
        tx = plan.wrap(tx)
    except ValueError as e:
        raise validation.ConfigError(str(e)) from None
    if announce:
        announce(_describe_run(config, mesh, info, total_steps, cache_dir))

    # 4. State: shapes first, then a jitted init straight into the replicated layout.
    replicated = parallel.replicated(mesh)
    rng = jax.random.key(config.seed)
    init_rng, dropout_rng = jax.random.split(rng)
    init_fn = in_scope(functools.partial(init_state, model, tx, config, image_size))
    abstract_state = jax.eval_shape(init_fn, init_rng)
    state_shardings = jax.tree.map(lambda _: replicated, abstract_state)

    # 5. Restore: the workdir's own checkpoint, else init_from weights, else scratch. Every process
    #    restores the same step (a checkpoint any of them cannot read is skipped by all).
    checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.checkpoint_max_to_keep)
    restored = checkpointer.restore_latest(ckpt_lib.abstract_like(abstract_state, state_shardings))
    writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
    if restored is not None:
        start_step, state, _meta = restored
        state = fill_missing_fields(state, config)
        log.info("resumed from %s at step %d", checkpointer.directory, start_step)
    else:
        start_step = 0
        state = jax.jit(init_fn, out_shardings=state_shardings)(init_rng)
        if config.init_from:
            state = _load_init_from(config, model, state, replicated)
    if not config.eval_only:  # records past the restored step (all, when starting over) are rewritten
        writer.truncate_after(start_step)
    if is_main:
        recorded = config
        if is_folder:  # the class names, which map the model's outputs back to names
            recorded = config.copy_and_resolve_references()
            recorded.dataset.label_names = list(info.label_names)
        metrics_lib.write_config(workdir, recorded)
        rundir.write_environment(workdir, mesh.devices.flat)
    labels = {"label_names": list(info.label_names)} if is_folder else {}  # also in every checkpoint

    # 6. Steps, compiled up front so the log says what compiling cost (or that the cache had them).
    def batch_spec(batch_size: int, with_mask: bool):
        spec = {
            "image": jax.ShapeDtypeStruct(
                (batch_size, image_size, image_size, 3), jnp.uint8, sharding=parallel.data_sharding(mesh)
            ),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=parallel.data_sharding(mesh)),
        }
        if with_mask:
            spec["mask"] = jax.ShapeDtypeStruct((batch_size,), jnp.bool_, sharding=parallel.data_sharding(mesh))
        return spec

    eval_step = compilation.compile_step(
        "eval step",
        make_eval_step(model, mesh, config),
        state.params,
        state.batch_stats,
        batch_spec(config.eval_batch_size, True),
        announce=announce,
    )
    eval_batches = functools.partial(
        pipeline.make_eval_iterator, config, global_batch_size=config.eval_batch_size, rows=eval_rows
    )

    def run_eval(state) -> dict[str, float]:
        if config.ema_decay:
            return evaluate(eval_step, state.ema_params, state.ema_batch_stats, eval_batches, mesh)
        return evaluate(eval_step, state.params, state.batch_stats, eval_batches, mesh)

    if config.eval_only:
        result = run_eval(state)
        print(
            f"eval at step {start_step}: top1 {result['eval/top1']:.4f}  top5 {result['eval/top5']:.4f}  "
            f"({result['eval/examples']} examples)",
            flush=True,
        )
        checkpointer.close()
        return state

    train_step = compilation.compile_step(
        "train step",
        make_train_step(model, tx, schedule, config, info.num_classes, mesh, plan),
        state,
        batch_spec(config.batch_size, False),
        dropout_rng,
        announce=announce,
    )

    # 7. The loop.
    # Each batch goes to the devices while the step before it runs (a quarter of float32's bytes: uint8).
    train_iter = parallel.prefetch_to_devices(
        pipeline.make_train_iterator(
            config, global_batch_size=config.batch_size, rows=train_rows, start_step=start_step
        ),
        mesh,
    )
    progress = metrics_lib.Progress(total_steps, start_step, enabled=is_main and config.progress_bar)
    throughput = metrics_lib.Throughput()
    stop_vote = parallel.StopVote(mesh)
    # Metrics of the steps since the last log, as device arrays: the host reads them only at logging and
    # checkpoint steps, so between those it dispatches steps without waiting for any to finish.
    pending: list[tuple[int, dict]] = []
    last_saved = start_step if restored is not None else None
    step = start_step

    def check_finite() -> None:
        """Raises naming the first pending step whose loss or gradient was NaN or Inf (on_nonfinite="stop")."""
        if config.on_nonfinite != "stop" or not pending:
            return
        flags = jax.device_get([m["finite"] for _, m in pending])
        bad = next((s for (s, _), ok in zip(pending, flags) if not ok), None)
        if bad is not None:
            where = (
                f"step {last_saved} in {checkpointer.directory}"
                if last_saved is not None
                else "none (no checkpoint was saved yet)"
            )
            raise NonFiniteLossError(
                f"loss is NaN or Inf at step {bad}; the last good checkpoint is {where}. Lower "
                "config.schedule.base_learning_rate, set config.grad_clip_norm, or set "
                "config.on_nonfinite='skip' to skip such updates."
            )

    try:
        with StopRequest() as stop:
            while step < total_steps:
                # Every process polls once per step and all see the same answer at the same step.
                if stop_vote.poll(stop.signal is not None):
                    why = f"received signal {stop.signal}" if stop.signal is not None else "another process stopped"
                    progress.write(f"{why}: saving step {step} and exiting")
                    break
                state, step_metrics = train_step(state, next(train_iter), dropout_rng)
                step += 1
                pending.append((step, step_metrics))
                throughput.add(config.batch_size)
                if step % config.log_every_steps == 0 or step == total_steps:
                    check_finite()
                    summary = _summarise([m for _, m in pending])
                    pending.clear()
                    summary["perf/images_per_sec"] = throughput.rate()
                    summary["train/nonfinite_skips"] = int(state.nonfinite_skips)
                    writer.write(step, summary)
                    progress.update(0, loss=summary["train/loss"], img_s=summary["perf/images_per_sec"])
                if step % config.eval_every_steps == 0 and step != total_steps:
                    writer.write(step, run_eval(state))
                if step % config.checkpoint_every_steps == 0 or step == total_steps:
                    check_finite()  # never save a state that went NaN
                    checkpointer.save(step, state, {"step": step, **labels})
                    last_saved = step
                progress.update(1)
        if step < total_steps and last_saved != step:  # interrupted: keep what we have
            check_finite()
            checkpointer.save(step, state, {"step": step, **labels}, force=True)
    except (NonFiniteLossError, ckpt_lib.CheckpointWriteError) as e:
        if is_main:
            rundir.write_status(workdir, rundir.FAILED, step=step, total_steps=total_steps, exit_code=1, error=str(e))
        raise
    finally:
        checkpointer.close()
        progress.close()

    if step == total_steps:
        result = run_eval(state)
        if step > start_step:  # a re-run of a finished job reports again but writes nothing twice
            writer.write(step, result)
        if is_main:
            done = "final eval" if step > start_step else "run already complete; eval"
            print(f"{done} at step {step}: top1 {result['eval/top1']:.4f}  top5 {result['eval/top5']:.4f}", flush=True)
    writer.close()
    if is_main:
        rundir.write_status(
            workdir, rundir.FINISHED if step == total_steps else rundir.INTERRUPTED, step=step, total_steps=total_steps
        )
    return state


def _describe_run(config, mesh, info, total_steps: int, cache_dir: str | None) -> str:
    """The run's shape in one line: devices, processes, the global batch and how it is split."""
    n_dev, k = mesh.devices.size, int(config.grad_accum_steps)
    batch = f"global batch {config.batch_size}"
    if k > 1:
        batch += f" per update = {k} micro-batches of {config.batch_size // k}"
    per_device = config.batch_size // k // n_dev
    order = "global order" if info.random_access else "per-process order (no random access)"
    cache = f"compilation cache {cache_dir}" if cache_dir else "compilation cache off"
    return (
        f"{config.model.name} on {info.name}: {jax.process_count()} process(es), {n_dev} device(s); {batch} "
        f"({per_device} per device, BatchNorm statistics {config.bn_statistics}); {total_steps} steps; "
        f"data in {order}; {cache}"
    )


def _summarise(pending: list[dict]) -> dict[str, float]:
    fetched = jax.device_get(pending)
    keys = [k for k in fetched[0] if k != "finite"]
    out = {k: float(np.mean([m[k] for m in fetched])) for k in keys}
    out["train/learning_rate"] = float(fetched[-1]["train/learning_rate"])
    return out


def _load_init_from(config, model, state: TrainState, replicated) -> TrainState:
    loaded = stacking.to_layout(ckpt_lib.load_init_variables(config.init_from), model)  # either block layout
    host = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    merged, reinit = ckpt_lib.merge_init_variables(host, loaded)
    if reinit:
        log.info("init_from: re-initialised %d classifier leaves for the new class count: %s", len(reinit), reinit)
    params = jax.device_put(merged["params"], replicated)
    batch_stats = jax.device_put(merged.get("batch_stats", {}), replicated)
    ema = jax.tree.map(jnp.copy, params) if config.ema_decay else {}
    return state.replace(params=params, batch_stats=batch_stats, ema_params=ema)
