"""Schedules, optimizers and EMA against the papers' recipes and TF's update formulas, worked out in numpy."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from inception_jax import optim


def make_config(**overrides):
    c = ml_collections.ConfigDict(type_safe=False)  # tests set ints, floats and None freely
    c.total_steps = 0
    c.num_epochs = 100
    c.grad_clip_norm = None
    c.optimizer = dict(
        name="rmsprop",
        momentum=0.9,
        nesterov=False,
        rms_decay=0.9,
        eps=1.0,
        rms_initial_scale=1.0,
        b1=0.9,
        b2=0.999,
        weight_decay=0.0,
        weight_decay_mode="l2",
    )
    c.schedule = dict(
        name="exponential",
        base_learning_rate=0.045,
        decay_rate=0.94,
        decay_epochs=2.0,
        staircase=True,
        warmup_epochs=0.0,
        end_learning_rate=0.0,
    )
    for key, value in overrides.items():  # "schedule__name" -> c.schedule.name
        *parents, leaf = key.split("__")
        target = c
        for part in parents:
            target = target[part]
        target[leaf] = value
    return c


def lr_at(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


# --- durations ------------------------------------------------------------------------------------


def test_steps_from_either_field():
    assert optim.steps_from(make_config(num_epochs=2.5), 100) == 250
    assert optim.steps_from(make_config(num_epochs=0, total_steps=1234), 100) == 1234
    assert optim.steps_from(make_config(num_epochs=None, total_steps=7), 100) == 7
    assert optim.to_steps(0.29, 100) == 29  # not 28 from float noise


@pytest.mark.parametrize("total_steps,num_epochs", [(10, 2.0), (0, 0), (None, None), (0, -1)])
def test_steps_from_needs_exactly_one(total_steps, num_epochs):
    with pytest.raises(ValueError, match=r"config\.total_steps.*config\.num_epochs") as err:
        optim.steps_from(make_config(total_steps=total_steps, num_epochs=num_epochs), 100)
    assert f"config.total_steps={total_steps!r}" in str(err.value)
    assert f"config.num_epochs={num_epochs!r}" in str(err.value)


# --- schedules ------------------------------------------------------------------------------------


def test_inception_v3_schedule():
    spe = 100  # 0.045 * 0.94 ** floor(step / (2 * spe))
    steps = [0, 1, 199, 200, 201, 399, 400, 1000, 19999]
    expected = [0.045 * 0.94 ** math.floor(s / (2 * spe)) for s in steps]
    np.testing.assert_allclose(lr_at(optim.make_schedule(make_config(), spe, 20000), steps), expected, rtol=1e-6)
    np.testing.assert_allclose(expected[3], 0.0423, rtol=1e-9)


def test_googlenet_schedule():
    spe = 50  # -4% every 8 epochs = 400 steps
    config = make_config(schedule__base_learning_rate=0.01, schedule__decay_rate=0.96, schedule__decay_epochs=8.0)
    steps = [0, 399, 400, 799, 800, 4000]
    expected = [0.01, 0.01, 0.0096, 0.0096, 0.009216, 0.01 * 0.96**10]
    np.testing.assert_allclose(lr_at(optim.make_schedule(config, spe, 5000), steps), expected, rtol=1e-6)


def test_smooth_exponential_schedule():
    config = make_config(schedule__staircase=False)
    np.testing.assert_allclose(lr_at(optim.make_schedule(config, 100, 1000), [100]), [0.045 * 0.94**0.5], rtol=1e-6)


def test_warmup_then_cosine_endpoints():
    spe = 10  # 2 epochs warmup = 20 steps, then cosine over 100 steps from 0.1 to 0.001
    config = make_config(
        schedule__name="cosine",
        schedule__base_learning_rate=0.1,
        schedule__warmup_epochs=2.0,
        schedule__end_learning_rate=0.001,
    )
    steps = [0, 10, 20, 70, 120, 150]
    expected = [0.0, 0.05, 0.1, (0.1 + 0.001) / 2, 0.001, 0.001]
    np.testing.assert_allclose(lr_at(optim.make_schedule(config, spe, 120), steps), expected, rtol=1e-6, atol=1e-9)


def test_constant_schedule_with_warmup():
    config = make_config(schedule__name="constant", schedule__base_learning_rate=0.2, schedule__warmup_epochs=1.0)
    np.testing.assert_allclose(lr_at(optim.make_schedule(config, 4, 100), [0, 2, 4, 99]), [0, 0.1, 0.2, 0.2], rtol=1e-6)


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        (dict(schedule__name="step"), r"config\.schedule\.name='step'.*constant.*cosine.*exponential"),
        (dict(schedule__base_learning_rate=0.0), r"config\.schedule\.base_learning_rate"),
        (dict(schedule__decay_rate=1.5), r"config\.schedule\.decay_rate"),
        (dict(schedule__decay_rate=0.0), r"config\.schedule\.decay_rate"),
        (dict(schedule__warmup_epochs=10.0), r"config\.schedule\.warmup_epochs"),
    ],
)
def test_schedule_errors(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        optim.make_schedule(make_config(**overrides), 10, 100)


# --- RMSProp as TF1 -------------------------------------------------------------------------------


def tf1_rmsprop_numpy(w, grads, lrs, decay=0.9, eps=1.0, momentum=0.9):
    """tf.train.RMSPropOptimizer (ApplyRMSProp), ms initialised to ones, float64."""
    w = np.array(w, np.float64)
    ms, mom = np.ones_like(w), np.zeros_like(w)
    for g, lr in zip(grads, lrs):
        ms = decay * ms + (1 - decay) * g**2
        mom = momentum * mom + lr * g / np.sqrt(ms + eps)
        w = w - mom
    return w


def lr_outside_momentum_numpy(w, grads, lrs, decay=0.9, eps=1.0, momentum=0.9):
    """The variant that differs from TF: the momentum traces g / sqrt(ms + eps), lr applied afterwards."""
    w = np.array(w, np.float64)
    ms, mom = np.ones_like(w), np.zeros_like(w)
    for g, lr in zip(grads, lrs):
        ms = decay * ms + (1 - decay) * g**2
        mom = momentum * mom + g / np.sqrt(ms + eps)
        w = w - lr * mom
    return w


@pytest.mark.parametrize("num_steps", [1, 3])
def test_tf_rmsprop_matches_tf1_formula_under_changing_lr(num_steps):
    lrs = np.array([0.1, 0.05, 0.2])
    grads = [np.array([0.5, -2.0, 3.0]), np.array([-1.0, 0.25, 4.0]), np.array([2.0, 1.0, -0.5])]
    w0 = np.array([1.0, -1.0, 0.5])
    tx = optim.tf_rmsprop(lambda count: jnp.asarray(lrs, jnp.float32)[count])
    w, state = jnp.asarray(w0, jnp.float32), None
    state = tx.init(w)
    for g in grads[:num_steps]:
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state, w)
        w = optax.apply_updates(w, updates)
    expected = tf1_rmsprop_numpy(w0, grads[:num_steps], lrs[:num_steps])
    np.testing.assert_allclose(w, expected, rtol=1e-6, atol=1e-7)
    if num_steps == 3:  # the test can tell the two placements of lr apart
        assert not np.allclose(expected, lr_outside_momentum_numpy(w0, grads, lrs), rtol=1e-4, atol=0)


# --- the optimizer chain --------------------------------------------------------------------------


PARAMS = {
    "conv": {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([0.5])},
    "bn": {"scale": jnp.array([2.0]), "bias": jnp.array([-1.0])},
}
GRADS = {
    "conv": {"kernel": jnp.array([0.3, 0.4]), "bias": jnp.array([0.2])},
    "bn": {"scale": jnp.array([-0.1]), "bias": jnp.array([0.6])},
}


def one_update(config, grads=GRADS, params=PARAMS):
    tx, _ = optim.make_optimizer(config, steps_per_epoch=10, total_steps=100)
    updates, _ = tx.update(grads, tx.init(params), params)
    return jax.tree.map(np.asarray, updates)


def sgd_config(lr=0.1, **overrides):
    return make_config(
        optimizer__name="sgd",
        optimizer__momentum=0.0,
        schedule__name="constant",
        schedule__base_learning_rate=lr,
        **overrides,
    )


def test_kernel_mask():
    assert optim.kernel_mask(PARAMS) == {"conv": {"kernel": True, "bias": False}, "bn": {"scale": False, "bias": False}}


def test_clipping_at_two():
    grads = {"w": jnp.array([3.0, 4.0])}  # global norm 5 -> scaled by 2/5
    params = {"w": jnp.zeros(2)}
    config = sgd_config(lr=1.0, grad_clip_norm=2.0)
    np.testing.assert_allclose(one_update(config, grads, params)["w"], [-1.2, -1.6], rtol=1e-6)
    small = {"w": jnp.array([0.6, 0.8])}  # norm 1 < 2: unchanged
    np.testing.assert_allclose(one_update(config, small, params)["w"], [-0.6, -0.8], rtol=1e-6)
    np.testing.assert_allclose(one_update(sgd_config(lr=1.0), grads, params)["w"], [-3.0, -4.0], rtol=1e-6)


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_weight_decay_sgd_kernels_only(mode):
    # Plain SGD: both modes give -lr * (g + wd * w) on kernels and -lr * g elsewhere.
    up = one_update(sgd_config(optimizer__weight_decay=0.5, optimizer__weight_decay_mode=mode))
    np.testing.assert_allclose(
        up["conv"]["kernel"], -0.1 * (np.array([0.3, 0.4]) + 0.5 * np.array([1.0, -2.0])), rtol=1e-6
    )
    np.testing.assert_allclose(up["conv"]["bias"], [-0.02], rtol=1e-6)
    np.testing.assert_allclose(up["bn"]["scale"], [0.01], rtol=1e-6)
    np.testing.assert_allclose(up["bn"]["bias"], [-0.06], rtol=1e-6)


def test_weight_decay_l2_vs_decoupled_rmsprop():
    lr, wd = 0.1, 0.5
    w, g = np.array([1.0, -2.0]), np.array([0.3, 0.4])

    def rms_step(grad):  # first TF1 RMSProp step: ms = 0.9 * 1 + 0.1 * g^2, mom = lr * g / sqrt(ms + 1)
        return -lr * grad / np.sqrt(0.9 + 0.1 * grad**2 + 1.0)

    base = dict(schedule__name="constant", schedule__base_learning_rate=lr, optimizer__weight_decay=wd)
    l2 = one_update(make_config(optimizer__weight_decay_mode="l2", **base))
    decoupled = one_update(make_config(optimizer__weight_decay_mode="decoupled", **base))
    # l2: wd * w joins the gradient and goes through RMSProp's normalisation.
    np.testing.assert_allclose(l2["conv"]["kernel"], rms_step(g + wd * w), rtol=1e-6)
    # decoupled: RMSProp on g alone, then -lr * wd * w.
    np.testing.assert_allclose(decoupled["conv"]["kernel"], rms_step(g) - lr * wd * w, rtol=1e-6)
    for up in (l2, decoupled):  # no decay on biases and BN scales
        np.testing.assert_allclose(up["conv"]["bias"], rms_step(np.array([0.2])), rtol=1e-6)
        np.testing.assert_allclose(up["bn"]["scale"], rms_step(np.array([-0.1])), rtol=1e-6)


def test_l2_decay_is_clipped_with_the_gradient():
    # slim: the regulariser is part of the loss, so its gradient is clipped too.
    grads, params = {"kernel": jnp.array([3.0, 0.0])}, {"kernel": jnp.array([0.0, 8.0])}
    config = sgd_config(lr=1.0, grad_clip_norm=1.0, optimizer__weight_decay=0.5)
    np.testing.assert_allclose(one_update(config, grads, params)["kernel"], [-0.6, -0.8], rtol=1e-6)  # (3, 4) / 5


def test_adamw_decoupled_first_step():
    lr, wd = 0.01, 0.1
    config = make_config(
        optimizer__name="adamw",
        optimizer__weight_decay=wd,
        optimizer__weight_decay_mode="decoupled",
        schedule__name="constant",
        schedule__base_learning_rate=lr,
    )
    up = one_update(config)
    # Adam's first bias-corrected step is g / (|g| + 1e-8) = sign(g).
    np.testing.assert_allclose(
        up["conv"]["kernel"], -lr * (np.sign([0.3, 0.4]) + wd * np.array([1.0, -2.0])), rtol=1e-5
    )
    np.testing.assert_allclose(up["bn"]["scale"], [lr], rtol=1e-5)


def test_decoupled_decay_follows_the_schedule():
    # Warmup over 1 epoch (10 steps): lr at step 0 is 0, at step 5 is 0.05; the decay term scales with it.
    config = sgd_config(
        lr=0.1, optimizer__weight_decay=0.5, optimizer__weight_decay_mode="decoupled", schedule__warmup_epochs=1.0
    )
    tx, _ = optim.make_optimizer(config, steps_per_epoch=10, total_steps=100)
    zero = jax.tree.map(jnp.zeros_like, PARAMS)
    state = tx.init(PARAMS)
    for step in range(6):
        updates, state = tx.update(zero, state, PARAMS)
        expected = -0.01 * step * 0.5 * np.array([1.0, -2.0])
        np.testing.assert_allclose(updates["conv"]["kernel"], expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        (dict(optimizer__name="lamb"), r"config\.optimizer\.name='lamb'.*adamw.*rmsprop.*sgd"),
        (dict(optimizer__weight_decay_mode="l1"), r"config\.optimizer\.weight_decay_mode='l1'"),
        (dict(grad_clip_norm=0.0), r"config\.grad_clip_norm"),
    ],
)
def test_optimizer_errors(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        optim.make_optimizer(make_config(**overrides), 10, 100)


def test_make_optimizer_returns_the_schedule():
    _, schedule = optim.make_optimizer(make_config(), 100, 1000)
    np.testing.assert_allclose(float(schedule(200)), 0.045 * 0.94, rtol=1e-6)


# --- EMA ------------------------------------------------------------------------------------------


def test_ema_first_steps_and_cap():
    # ema starts at 0 and params stay at 1, so after n steps ema = 1 - d_0 * ... * d_{n-1}
    # with d_step = min(0.9999, (1 + step) / (10 + step)) = 1/10, 2/11, 3/12.
    ema, params = {"w": jnp.zeros(2)}, {"w": jnp.ones(2)}
    expected = [0.9, 1 - 0.1 * 2 / 11, 1 - 0.1 * 2 / 11 * 3 / 12]
    update = jax.jit(optim.ema_update)
    for step in range(3):
        ema = update(ema, params, 0.9999, step)
        np.testing.assert_allclose(ema["w"], [expected[step]] * 2, rtol=1e-6)
    np.testing.assert_allclose(optim.ema_decay_at(0.9999, 10**6), 0.9999, rtol=1e-7)  # (1e6+1)/(1e6+10) > decay
    np.testing.assert_allclose(optim.ema_decay_at(0.5, 0), 0.1, rtol=1e-7)
