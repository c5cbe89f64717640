"""The CPU forms (inception_jax/kernels.py) compute the same functions as the libraries' operations they
stand in for, and the switch picks them as documented."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from inception_jax import kernels
from inception_jax.models import layers

NHWC = ("NHWC", "HWIO", "NHWC")
FORMS = ("cpu", "xla", "auto")


def _close(ours, ref, rel=1e-5):
    """Every leaf within `rel` of the largest magnitude of the reference leaf."""
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=0, atol=rel * scale)


def _primitives(fn, *args) -> str:
    """The traced program as text: every primitive, inside nested jaxprs too."""
    return str(jax.make_jaxpr(fn)(*args))


def test_the_switch_rejects_unknown_names_and_resolves_auto_by_platform():
    with pytest.raises(ValueError, match="kernels='gpu' is not one of"):
        kernels.check("gpu")
    assert [kernels.for_platform("auto", p) for p in ("cpu", "cuda", "rocm", "tpu")] == ["cpu", "xla", "xla", "xla"]
    assert kernels.for_platform("cpu", "tpu") == "cpu" and kernels.for_platform("xla", "cpu") == "xla"
    with pytest.raises(ValueError, match=r"InceptionV3.kernels='fast'"):
        import inception_jax

        inception_jax.create_model("inception_v3", kernels="fast").init(jax.random.key(0), jnp.zeros((1, 75, 75, 3)))


# --- 1x1 convolutions -----------------------------------------------------------------------------


def _conv(x, w, strides, padding, **kw):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    return kernels.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn, **kw)


def _lax_conv(x, w, strides, padding, **kw):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn, **kw)


@pytest.mark.parametrize("padding", [((0, 0), (0, 0)), "VALID", "SAME"])
def test_pointwise_conv_as_a_product_equals_xlas_conv_with_gradients(padding):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 9, 7, 48))
    w = jax.random.normal(kw, (1, 1, 48, 40)) * 0.2
    cotangent = jax.random.normal(kg, (2, 9, 7, 40))

    def vjp(fn):
        y, pullback = jax.vjp(lambda x, w: fn(x, w, (1, 1), padding), x, w)
        return (y, *pullback(cotangent))

    with kernels.use("cpu"):
        assert "conv_general_dilated" not in _primitives(lambda x, w: _conv(x, w, (1, 1), padding), x, w)
        # (N*H*W, C) rows forward and backward: with 4-D operands XLA's CPU backend copies the output's
        # gradient into a transposed layout for the kernel's gradient.
        dots = [e for e in jax.make_jaxpr(lambda: vjp(_conv))().jaxpr.eqns if e.primitive.name == "dot_general"]
        assert len(dots) == 3 and all(v.aval.ndim == 2 for e in dots for v in e.invars)
        _close(vjp(_conv), vjp(_lax_conv), rel=2e-6)
    with kernels.use("xla"):
        assert "dot_general" not in _primitives(lambda x, w: _conv(x, w, (1, 1), padding), x, w)
        _close(vjp(_conv), vjp(_lax_conv), rel=0)


@pytest.mark.parametrize(
    "kernel, strides, padding, kw",
    [
        ((3, 3), (1, 1), ((1, 1), (1, 1)), {}),
        ((1, 1), (2, 2), "VALID", {}),  # strided 1x1: a subsampling, left to XLA
        ((1, 1), (1, 1), ((1, 1), (1, 1)), {}),  # padded 1x1
        ((1, 7), (1, 1), ((0, 0), (3, 3)), {}),
        ((1, 1), (1, 1), "VALID", {"feature_group_count": 2}),
    ],
)
def test_other_convolutions_are_xlas_in_every_form(kernel, strides, padding, kw):
    groups = kw.get("feature_group_count", 1)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 8))
    w = jax.random.normal(jax.random.key(2), (*kernel, 8 // groups, 6))
    with kernels.use("cpu"):
        ours = _conv(x, w, strides, padding, **kw)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(_lax_conv(x, w, strides, padding, **kw)))


@pytest.mark.parametrize("form", FORMS)
def test_convbn_has_flaxs_parameters_and_function(form):
    x = jax.random.normal(jax.random.key(3), (2, 5, 5, 16))
    unit = layers.ConvBN(12, 1)
    with kernels.use(form):
        variables = unit.init(jax.random.key(4), x)
        ours = unit.apply(variables, x)
    assert jax.tree.map(jnp.shape, variables["params"]["conv"]) == {"kernel": (1, 1, 16, 12)}
    conv = nn.Conv(12, (1, 1), padding=((0, 0), (0, 0)), use_bias=False).apply(
        {"params": variables["params"]["conv"]}, x
    )
    bn, stats = variables["params"]["bn"], variables["batch_stats"]["bn"]
    expected = jax.nn.relu((conv - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-3) * bn["scale"] + bn["bias"])
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=1e-5, atol=1e-5)


# --- BatchNorm --------------------------------------------------------------------------------------
# Inputs with a non-zero mean, so that the variance formula matters.


def _bn_inputs(shape=(4, 11, 9, 24), seed=5):
    kx, kg, ks, kb = jax.random.split(jax.random.key(seed), 4)
    c = shape[-1]
    x = jax.random.normal(kx, shape) * jnp.linspace(0.5, 3.0, c) + jnp.linspace(-2.0, 4.0, c)
    params = {"scale": 1.0 + 0.3 * jax.random.normal(ks, (c,)), "bias": 0.2 * jax.random.normal(kb, (c,))}
    return x, jax.random.normal(kg, shape), params


def _apply_bn(module, params, stats, x, train):
    if train:
        return module.apply(
            {"params": params, "batch_stats": stats}, x, use_running_average=False, mutable=["batch_stats"]
        )
    return module.apply({"params": params, "batch_stats": stats}, x, use_running_average=True), None


@pytest.mark.parametrize("use_scale", [True, False])
def test_batchnorm_has_flaxs_variables_and_its_inference_output_bit_for_bit(use_scale):
    x, _, params = _bn_inputs()
    ours = layers.BatchNorm(momentum=0.9, epsilon=1e-3, use_scale=use_scale)
    ref = nn.BatchNorm(momentum=0.9, epsilon=1e-3, use_scale=use_scale)
    v_ours, v_ref = (m.init(jax.random.key(0), x, use_running_average=False) for m in (ours, ref))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), v_ours) == jax.tree.map(lambda a: (a.shape, a.dtype), v_ref)
    jax.tree.map(np.testing.assert_array_equal, v_ours, v_ref)
    assert isinstance(ours, nn.BatchNorm)  # what inception_jax.trainer.finetune looks for
    params = params if use_scale else {"bias": params["bias"]}
    stats = {"mean": jnp.linspace(-1.0, 3.0, 24), "var": jnp.linspace(0.5, 4.0, 24)}
    for form in FORMS:
        with kernels.use(form):
            np.testing.assert_array_equal(
                np.asarray(_apply_bn(ours, params, stats, x, False)[0]),
                np.asarray(_apply_bn(ref, params, stats, x, False)[0]),
            )


@pytest.mark.parametrize("use_scale", [True, False])
def test_batchnorm_training_matches_flax_two_pass_in_every_form(use_scale):
    """The same outputs, updated running averages, and gradients for the parameters and the input;
    "xla" is Flax's own module."""
    x, cotangent, params = _bn_inputs()
    params = params if use_scale else {"bias": params["bias"]}
    stats = {"mean": jnp.zeros(24), "var": jnp.ones(24)}

    def run(module):
        (y, updated), pullback = jax.vjp(lambda p, x: _apply_bn(module, p, stats, x, True), params, x)
        return y, updated, pullback((cotangent, jax.tree.map(jnp.zeros_like, updated)))

    kw = dict(momentum=0.9, epsilon=1e-3, use_scale=use_scale)
    ref = run(nn.BatchNorm(use_fast_variance=False, **kw))
    for form in FORMS:
        with kernels.use(form):
            ours = run(layers.BatchNorm(**kw))
        _close(ours, ref, rel=0 if form == "xla" else 1e-5)
    # the running averages moved by (1 - momentum) towards the batch's biased statistics
    np.testing.assert_allclose(ours[1]["batch_stats"]["mean"], 0.1 * x.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(ours[1]["batch_stats"]["var"], 0.9 + 0.1 * x.var((0, 1, 2)), rtol=1e-5)


def test_batchnorm_cpu_form_gradient_equals_autodiff_of_the_formula_for_every_output():
    """The written-out backward pass, fed cotangents for the output *and* the statistics, equals
    autodiff of the same two-pass formula written with plain jnp reductions."""

    def formula(x, scale, bias):
        mean = x.mean((0, 1, 2))
        var = jnp.square(x - mean).mean((0, 1, 2))
        return (x - mean) * jax.lax.rsqrt(var + 1e-3) * scale + bias, mean, var

    x, dy, params = _bn_inputs(seed=6)
    dmean, dvar = jax.random.normal(jax.random.key(7), (2, 24))
    cotangents = (dy, dmean, dvar)
    ours_out, ours_pull = jax.vjp(lambda *a: kernels.batch_norm_train(*a, 1e-3), x, params["scale"], params["bias"])
    ref_out, ref_pull = jax.vjp(formula, x, params["scale"], params["bias"])
    _close(ours_out, ref_out)
    _close(ours_pull(cotangents), ref_pull(cotangents))


def test_batchnorm_in_bfloat16_keeps_float32_statistics():
    x, _, params = _bn_inputs()
    x = x.astype(jnp.bfloat16)
    stats = {"mean": jnp.zeros(24), "var": jnp.ones(24)}
    kw = dict(momentum=0.9, epsilon=1e-3, dtype=jnp.bfloat16)
    y_ref, updated_ref = _apply_bn(nn.BatchNorm(use_fast_variance=False, **kw), params, stats, x, True)
    for form in FORMS:
        with kernels.use(form):
            y, updated = _apply_bn(layers.BatchNorm(**kw), params, stats, x, True)
        assert y.dtype == jnp.bfloat16 and updated["batch_stats"]["var"].dtype == jnp.float32
        _close(y, y_ref, rel=1e-2)  # one bf16 rounding of the output
        _close(updated, updated_ref)


@pytest.mark.parametrize("use_scale", [True, False])
def test_batchnorm_gradients_take_the_parameters_dtypes(use_scale):
    """bf16 parameters (Keras weights have no `scale`) get bf16 gradients, as autodiff would give them."""
    x = _bn_inputs()[0]
    module = layers.BatchNorm(use_scale=use_scale, param_dtype=jnp.bfloat16)
    variables = module.init(jax.random.key(0), x, use_running_average=False)
    with kernels.use("cpu"):
        grads = jax.grad(lambda p: jnp.sum(_apply_bn(module, p, variables["batch_stats"], x, True)[0]))(
            variables["params"]
        )
    assert jax.tree.map(lambda g: g.dtype, grads) == jax.tree.map(lambda p: p.dtype, variables["params"])


def test_batchnorm_options_the_cpu_form_lacks_run_flaxs_form_or_are_refused():
    """A named axis (per-device statistics inside shard_map), a mask or the one-pass variance: "auto"
    runs Flax's BatchNorm, "cpu" says what it cannot do."""
    x, _, params = _bn_inputs()
    stats = {"mean": jnp.zeros(24), "var": jnp.ones(24)}
    mask = jnp.arange(4)[:, None, None, None] < 3
    for options, call in (({"use_fast_variance": True}, {}), ({}, {"mask": jnp.broadcast_to(mask, x.shape)})):
        module = layers.BatchNorm(**options)
        variables = {"params": params, "batch_stats": stats}
        with kernels.use("auto"):
            ours = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"], **call)
        ref = nn.BatchNorm(**{"use_fast_variance": False, **options}).apply(
            variables, x, use_running_average=False, mutable=["batch_stats"], **call
        )
        _close(ours, ref, rel=0)
        with kernels.use("cpu"), pytest.raises(ValueError, match="kernels='cpu' normalises over the last axis"):
            module.apply(variables, x, use_running_average=False, mutable=["batch_stats"], **call)

    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    per_device = layers.BatchNorm(axis_name="data")
    variables = {"params": params, "batch_stats": stats}
    batch = jnp.concatenate([x] * len(jax.devices()))  # the same 4 examples on every device

    def step(v, xs):
        return per_device.apply(v, xs, use_running_average=False, mutable=["batch_stats"])

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P()))
    y, updated = jax.jit(sharded)(variables, batch)
    ref_y, ref_updated = _apply_bn(nn.BatchNorm(use_fast_variance=False), params, stats, x, True)
    _close(y[:4], ref_y)
    _close(updated, ref_updated)


def test_channel_sum_is_a_matrix_vector_product_as_accurate_as_xlas_reduce():
    """A wide map with a large mean: one product over all N*H*W rows would be 4e-6 off (measured),
    enough to move train-mode logits 5x further from timm's at batch 2; ours is about 1e-7 off."""
    x = jax.random.normal(jax.random.key(8), (2, 149, 149, 8)) + 3.0
    exact = np.asarray(x, np.float64).sum((0, 1, 2))
    traced = _primitives(kernels.channel_sum, x)
    assert "dot_general" in traced and "reduce_sum" in traced
    np.testing.assert_allclose(np.asarray(jax.jit(kernels.channel_sum)(x), np.float64), exact, rtol=1e-6)


# --- max pool ---------------------------------------------------------------------------------------


def _flax_max_pool(x, window, strides, padding=0, *, ceil_mode=False, padding_mode="torch"):
    """The same pads as `layers.max_pool`, through Flax's `max_pool`, which XLA differentiates itself."""
    window, strides = layers.pair(window), layers.pair(strides)
    if padding_mode == "tf":
        pads = "SAME" if (ceil_mode or any(layers.pair(padding))) else "VALID"
    else:
        ph, pw = layers.pair(padding)
        pads = ((ph, ph), (pw, pw))
        if ceil_mode:
            pads = (
                layers.ceil_mode_pads(x.shape[1], window[0], strides[0], ph),
                layers.ceil_mode_pads(x.shape[2], window[1], strides[1], pw),
            )
    return nn.max_pool(x, window, strides, padding=pads)


@pytest.mark.parametrize(
    "shape, window, strides, padding, ceil_mode, padding_mode",
    [
        ((2, 15, 15, 5), 3, 2, 0, True, "torch"),  # GoogLeNet's reductions (ceil_mode: a last partial window)
        ((2, 14, 14, 4), 3, 1, 1, True, "torch"),  # its branch pools
        ((2, 14, 14, 4), 2, 2, 0, True, "torch"),
        ((2, 17, 17, 6), 3, 2, 0, False, "torch"),  # Inception-v3's reductions
        ((2, 16, 16, 3), 3, 2, 1, True, "tf"),  # TF 'SAME', asymmetric pads
        ((2, 9, 11, 3), (3, 2), (2, 1), 0, False, "torch"),
    ],
)
def test_max_pool_equals_flaxs_with_gradients_ties_included(shape, window, strides, padding, ceil_mode, padding_mode):
    """Values bit for bit; gradients as XLA's, on post-ReLU inputs full of ties (the first maximum in
    row-major order takes the gradient)."""
    kx, kc = jax.random.split(jax.random.key(7))
    x = jnp.maximum(jnp.round(jax.random.normal(kx, shape) * 2) / 2, 0.0)  # many equal values and zeros
    ours = lambda x: layers.max_pool(x, window, strides, padding, ceil_mode=ceil_mode, padding_mode=padding_mode)
    flax_pool = lambda x: _flax_max_pool(x, window, strides, padding, ceil_mode=ceil_mode, padding_mode=padding_mode)
    y_ref, ref_vjp = jax.vjp(flax_pool, x)
    cotangent = jax.random.normal(kc, y_ref.shape)
    tangent = jax.random.normal(kc, x.shape)
    for form in FORMS:
        with kernels.use(form):
            y, ours_vjp = jax.vjp(ours, x)
            np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
            np.testing.assert_allclose(
                np.asarray(jax.jit(lambda c: ours_vjp(c)[0])(cotangent)),  # noqa: B023 (called at once)
                np.asarray(ref_vjp(cotangent)[0]),
                rtol=1e-6,
                atol=1e-6,
            )
    # The CPU form's forward mode is the same linear map: <cotangent, J t> = <J^T cotangent, t> with
    # XLA's J^T. (XLA's own forward mode breaks ties its own way: compared on tie-free inputs.)
    with kernels.use("cpu"):
        forward = jax.jvp(ours, (x,), (tangent,))[1]
        untied = jax.random.normal(kx, shape)
        untied_forward = jax.jvp(ours, (untied,), (tangent,))[1]
    np.testing.assert_allclose(
        float(jnp.vdot(cotangent, forward)), float(jnp.vdot(ref_vjp(cotangent)[0], tangent)), rtol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(untied_forward), np.asarray(jax.jvp(flax_pool, (untied,), (tangent,))[1]))


def test_max_pool_gradient_is_select_and_scatter_only_in_xlas_form_and_nan_wins_as_in_pytorch():
    x = jax.random.normal(jax.random.key(0), (1, 6, 6, 2)).at[0, 1, 1, 0].set(jnp.nan)
    for form, expected in (("cpu", False), ("xla", True)):
        with kernels.use(form):
            grad = jax.jit(jax.grad(lambda x: jnp.nansum(layers.max_pool(x, 3, 2, ceil_mode=True))))
            assert ("stablehlo.select_and_scatter" in grad.lower(x).as_text()) == expected
    with kernels.use("cpu"):
        y = layers.max_pool(x, 3, 2, ceil_mode=True)
        assert bool(jnp.isnan(y[0, 0, 0, 0])) and not bool(jnp.isnan(y[0, 0, 0, 1]))
        assert float(grad(x)[0, 1, 1, 0]) == 0.0  # the NaN won its window; nansum gives it no cotangent


# --- global norms -----------------------------------------------------------------------------------


def test_global_norm_equals_optax_in_each_form_and_precision():
    rng = np.random.default_rng(3)
    tree = {
        "a": rng.normal(size=(3, 4)).astype(np.float32),
        "b": [rng.normal(size=7).astype(np.float32)],
        "c": np.float32(-2.5),
    }
    half = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), tree)
    for form in FORMS:
        norm = jax.jit(lambda t, form=form: kernels.global_norm(t, form))
        np.testing.assert_allclose(norm(tree), optax.tree.norm(tree), rtol=1e-6)
        assert norm(half).dtype == jnp.float32  # bf16 leaves are summed in float32
        np.testing.assert_allclose(
            norm(half), optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), half)), rtol=1e-6
        )
        assert float(kernels.global_norm({}, form)) == 0.0


@pytest.mark.parametrize("max_norm", [0.5, 100.0])  # clipped, and left alone
def test_clip_by_global_norm_equals_optax_in_each_form(max_norm):
    rng = np.random.default_rng(5)
    updates = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    theirs, _ = optax.clip_by_global_norm(max_norm).update(updates, optax.EmptyState())
    for form in FORMS:
        with kernels.use(form):
            ours, _ = jax.jit(kernels.clip_by_global_norm(max_norm).update)(updates, optax.EmptyState())
        _close(ours, theirs, rel=1e-6)
    if max_norm > float(optax.tree.norm(updates)):
        jax.tree.map(np.testing.assert_array_equal, ours, updates)


# --- whole train steps ------------------------------------------------------------------------------


class _EveryLayer(nn.Module):
    """Each layer with a CPU form, as the models use them: 1x1 and 3x3 ConvBN, a max pool, a linear head."""

    num_classes: int = 10
    in_channels: int = 3
    kernels: str = "auto"

    @nn.compact
    @layers.kernel_scope
    def __call__(self, x, train: bool = False):
        x = layers.ConvBN(16, 1)(x, train)
        x = layers.max_pool(layers.ConvBN(16, 3, padding=1)(x, train), 3, 2, ceil_mode=True)
        x = layers.ConvBN(24, 1)(x, train)
        features = jnp.mean(x, (1, 2))
        return nn.Dense(self.num_classes)(features), {"pre_logits": features, "aux_logits": ()}


def test_both_forms_make_the_same_train_step_in_float64():
    """One train step through the trainer (RMSProp, clipping that takes part, weight decay, EMA) with the
    CPU forms and with XLA's operations: the same loss, gradient norm, parameters, optimizer state,
    BatchNorm statistics and averages, and eval logits. In float64 the two agree to rounding, so any
    difference in the function would show. (The models' parity tests run on both forms too.)"""
    from inception_jax import optim
    from inception_jax.trainer import parallel, train, validation
    from inception_jax.trainer.config import base_config

    c = base_config()
    c.model.name = "googlenet"  # for validation only: its minimum input size is 15
    c.input.image_size, c.batch_size, c.total_steps = 15, 16, 10
    c.grad_clip_norm, c.ema_decay, c.label_smoothing = 0.5, 0.99, 0.1
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (16, 15, 15, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, 16).astype(np.int32),
    }
    model = _EveryLayer()
    results = {}
    with jax.enable_x64(True):
        for form in ("cpu", "xla"):
            c.kernels = form
            config = validation.validated(c)
            tx, schedule = optim.make_optimizer(config, 10, 10)
            state = train.init_state(model, tx, config, 15, jax.random.key(0))
            state = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
            state = jax.device_put(state, parallel.replicated(mesh))
            step = train.make_train_step(model, tx, schedule, config, 10, mesh)
            global_batch = parallel.global_batch(batch, mesh)
            lowered = step.lower(state, global_batch, jax.random.key(1)).as_text(debug_info=True)
            assert (kernels.CPU_FORM_SCOPE in lowered) == (form == "cpu")  # not the same program twice
            state, metrics = step(state, global_batch, jax.random.key(1))
            images = train.normalise_images(batch["image"], config.input.mean, config.input.std).astype(jnp.float64)
            logits = jax.jit(train.kernel_scope(lambda v, x: model.apply(v, x)[0], config, mesh))(
                {"params": state.params, "batch_stats": state.batch_stats}, images
            )
            results[form] = jax.device_get({"state": state, "metrics": metrics, "logits": logits})
    cpu, xla = results["cpu"], results["xla"]
    assert {leaf.dtype for leaf in jax.tree.leaves(cpu["state"].params)} == {np.dtype(np.float64)}
    assert float(cpu["metrics"]["train/grad_norm"]) > 0.5  # clipping took part
    # Each part against its own scale: leaves that are zero in exact arithmetic (a bias before a
    # BatchNorm gets no gradient) hold rounding noise of ~1e-21 in both.
    for part in ("params", "batch_stats", "opt_state", "ema_params", "ema_batch_stats"):
        ours, ref = getattr(cpu["state"], part), getattr(xla["state"], part)
        scale = max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(ref))
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * scale, err_msg=part)
    _close(cpu["metrics"], xla["metrics"], rel=1e-12)
    _close(cpu["logits"], xla["logits"], rel=1e-12)
