"""Optimizers, learning-rate schedules and parameter averaging built from a training config.

Everything here is pure optax/JAX: no TensorFlow, no data, no model code. The recipes it
reproduces are in REFERENCES.md §2.3 and §2.4 (RMSProp 0.9 / eps 1.0, lr 0.045 x 0.94 every 2 epochs,
clipping at 2.0: Rethinking section 8, v4 paper section 4) and §2.1 (Polyak averaging: GoogLeNet paper
section 6); the config fields it reads are listed in each function.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from inception_jax import kernels

SCHEDULES = ("constant", "cosine", "exponential")
OPTIMIZERS = ("adamw", "rmsprop", "sgd")
WEIGHT_DECAY_MODES = ("decoupled", "l2")


# --- durations ------------------------------------------------------------------------------------


def to_steps(value_epochs: float, steps_per_epoch: int) -> int:
    """`value_epochs` epochs as a whole number of steps (rounded to the nearest step).

    Rounding rather than truncating keeps float noise such as 0.29 * 100 = 28.999... from
    losing a step; for the papers' integer epochs the two agree with TF's `int(...)`.
    """
    if not steps_per_epoch > 0:
        raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch!r}")
    if not value_epochs >= 0:
        raise ValueError(f"a duration in epochs must be >= 0, got {value_epochs!r}")
    return int(round(value_epochs * steps_per_epoch))


def steps_from(config: Any, steps_per_epoch: int) -> int:
    """Total training steps from `config.total_steps` or `config.num_epochs` (exactly one > 0)."""
    total_steps = config.get("total_steps") or 0
    num_epochs = config.get("num_epochs") or 0
    if (total_steps > 0) == (num_epochs > 0):
        raise ValueError(
            "exactly one of config.total_steps and config.num_epochs must be > 0, got "
            f"config.total_steps={config.get('total_steps')!r}, config.num_epochs={config.get('num_epochs')!r}"
        )
    if total_steps > 0:
        if int(total_steps) != total_steps:
            raise ValueError(f"config.total_steps must be a whole number, got {total_steps!r}")
        return int(total_steps)
    steps = to_steps(num_epochs, steps_per_epoch)
    if steps < 1:
        raise ValueError(f"config.num_epochs={num_epochs!r} at {steps_per_epoch} steps per epoch is less than one step")
    return steps


# --- learning-rate schedule -----------------------------------------------------------------------


def make_schedule(config: Any, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """The learning rate per step from `config.schedule` (fields: `inception_jax/trainer/config.py`).

    - "exponential": base * decay_rate ** (t / decay_steps), floored when `staircase`
      (v3/v4: 0.045 x 0.94 every 2 epochs; GoogLeNet: x 0.96 every 8 epochs).
    - "cosine": base -> end_learning_rate over the steps after warmup.
    - "constant": base.
    A linear warmup from 0 over `warmup_epochs` comes first; the schedule proper then starts at its
    own step 0 (so an exponential decay counts its epochs from the end of warmup).
    """
    sched = config.schedule
    name = sched.name
    base = sched.base_learning_rate
    if not base > 0:
        raise ValueError(f"config.schedule.base_learning_rate must be > 0, got {base!r}")
    if name not in SCHEDULES:
        raise ValueError(f"config.schedule.name={name!r} is not one of {SCHEDULES}")
    warmup_steps = to_steps(sched.get("warmup_epochs") or 0.0, steps_per_epoch)
    if warmup_steps >= total_steps:
        raise ValueError(
            f"config.schedule.warmup_epochs={sched.get('warmup_epochs')!r} is {warmup_steps} steps, "
            f"not fewer than the {total_steps} total steps; shorten it (e.g. --config.schedule.warmup_epochs=0) "
            "or train longer"
        )

    if name == "constant":
        main = optax.constant_schedule(base)
    elif name == "exponential":
        rate = sched.decay_rate
        if not 0 < rate <= 1:
            raise ValueError(f"config.schedule.decay_rate must be in (0, 1], got {rate!r}")
        decay_steps = to_steps(sched.decay_epochs, steps_per_epoch)
        if decay_steps < 1:
            raise ValueError(
                f"config.schedule.decay_epochs={sched.decay_epochs!r} at {steps_per_epoch} steps per "
                "epoch is less than one step"
            )
        main = optax.exponential_decay(
            init_value=base,
            transition_steps=decay_steps,
            decay_rate=rate,
            staircase=bool(sched.get("staircase", True)),
        )
    else:  # cosine
        end = sched.get("end_learning_rate") or 0.0
        if not 0 <= end <= base:
            raise ValueError(
                f"config.schedule.end_learning_rate must be in [0, base_learning_rate={base!r}], got {end!r}"
            )
        # optax's `alpha` is the floor as a fraction of the initial value.
        main = optax.cosine_decay_schedule(base, decay_steps=total_steps - warmup_steps, alpha=end / base)

    if warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, base, transition_steps=warmup_steps)
    return optax.join_schedules([warmup, main], boundaries=[warmup_steps])


# --- RMSProp as TensorFlow 1 ----------------------------------------------------------------------


def tf_rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1.0,
    momentum: float = 0.9,
    initial_scale: float = 1.0,
) -> optax.GradientTransformation:
    """RMSProp exactly as TF1's `tf.train.RMSPropOptimizer` (the papers' optimizer):

        ms  = decay * ms + (1 - decay) * g**2        (ms starts at 1; TF2/Keras start it at 0)
        mom = momentum * mom + lr_t * g / sqrt(ms + eps)
        w   = w - mom

    optax's `rmsprop` with TF's defaults fixed computes the same, also under a changing learning rate,
    because it scales by lr_t before the momentum trace (REFERENCES.md §2.6; `tests/test_optim.py`).
    """
    return optax.rmsprop(
        learning_rate,
        decay=decay,
        eps=eps,
        initial_scale=initial_scale,
        eps_in_sqrt=True,
        centered=False,
        momentum=momentum if momentum else None,
        nesterov=False,
        bias_correction=False,
    )


# --- the optimizer chain --------------------------------------------------------------------------


def _leaf_name(path) -> str | None:
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", None))


def kernel_mask(params: Any) -> Any:
    """True for conv and dense kernels (leaves named "kernel"); False for biases, BN scales, etc."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _leaf_name(path) == "kernel", params)


def make_optimizer(
    config: Any, steps_per_epoch: int, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`(transformation, schedule)` for `config.optimizer`, `config.grad_clip_norm` and `config.schedule`.

    Weight decay applies to kernels only (`kernel_mask`), in one of two orders:
      "l2":        g + wd * w  ->  clip by global norm  ->  optimizer   (TF-slim's L2 loss term, whose
                   gradient is wd * w: slim's 4e-5 is wd = 4e-5; REFERENCES.md §2.6)
      "decoupled": clip  ->  optimizer  ->  - lr_t * wd * w           (AdamW-style; optax.adamw's own)
    "rmsprop" is `tf_rmsprop`, "sgd" optax.sgd, "adamw" optax.adamw with optax's eps 1e-8
    (`config.optimizer.eps` is RMSProp's only). The schedule comes back so the trainer can log it.
    """
    opt = config.optimizer
    schedule = make_schedule(config, steps_per_epoch, total_steps)

    name = opt.name
    if name not in OPTIMIZERS:
        raise ValueError(f"config.optimizer.name={name!r} is not one of {OPTIMIZERS}")
    wd = opt.get("weight_decay") or 0.0
    if not wd >= 0:
        raise ValueError(f"config.optimizer.weight_decay must be >= 0, got {wd!r}")
    mode = opt.get("weight_decay_mode") or "l2"
    if mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"config.optimizer.weight_decay_mode={mode!r} is not one of {WEIGHT_DECAY_MODES}")
    clip = config.get("grad_clip_norm")
    if clip is not None and not clip > 0:
        raise ValueError(f"config.grad_clip_norm must be > 0 or None (off), got {clip!r}")

    l2 = wd > 0 and mode == "l2"
    decoupled = wd > 0 and mode == "decoupled"

    if name == "rmsprop":
        core = tf_rmsprop(
            schedule,
            decay=opt.rms_decay,
            eps=opt.eps,
            momentum=opt.momentum,
            initial_scale=opt.get("rms_initial_scale", 1.0),
        )
    elif name == "sgd":
        core = optax.sgd(schedule, momentum=opt.momentum or None, nesterov=bool(opt.get("nesterov", False)))
    else:  # adamw: optax applies -lr_t * wd * w itself, after Adam's direction.
        core = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=wd if decoupled else 0.0, mask=kernel_mask)
        decoupled = False

    parts = []
    if l2:
        parts.append(optax.add_decayed_weights(wd, mask=kernel_mask))
    if clip is not None:
        parts.append(kernels.clip_by_global_norm(clip))
    parts.append(core)
    if decoupled:
        # The optimizer's output already carries -lr_t; add -lr_t * wd * w with the same step count.
        parts.append(optax.add_decayed_weights(lambda count: -wd * schedule(count), mask=kernel_mask))
    return optax.chain(*parts), schedule


# --- parameter averaging --------------------------------------------------------------------------


def ema_decay_at(decay: float, step: jax.typing.ArrayLike) -> jax.Array:
    """TF's `ExponentialMovingAverage(decay, num_updates=step)`: min(decay, (1 + step) / (10 + step))."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def ema_update(ema_params: Any, params: Any, decay: float, step: jax.typing.ArrayLike) -> Any:
    """One Polyak/EMA step: ema = d * ema + (1 - d) * params with d = `ema_decay_at(decay, step)`.

    `step` is TF's `num_updates`: pass the count of updates made before this one (0 at the first),
    so early averages follow the parameters closely (d = 0.1, 2/11, 3/12, ...) and d reaches
    `decay` later. Pure and jit-friendly; works on any pytree (params, or params and batch_stats).
    """
    d = ema_decay_at(decay, step)
    return jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), ema_params, params)
