"""Layer reformulations made for speed compute the same function as the operation they replace."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax.models import layers

NHWC = ("NHWC", "HWIO", "NHWC")


def _reference_conv(x, w, strides, padding, **kw):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn, **kw)


def _ours(x, w, strides, padding, **kw):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    return layers.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn, **kw)


@pytest.mark.parametrize("padding", [((0, 0), (0, 0)), "VALID", "SAME"])
def test_pointwise_conv_as_matmul_equals_xla_conv_with_gradients(padding):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 9, 7, 48))
    w = jax.random.normal(kw, (1, 1, 48, 40)) * 0.2
    cotangent = jax.random.normal(kg, (2, 9, 7, 40))
    # The reformulation is taken: no convolution is left in the traced program.
    assert "conv_general_dilated" not in str(jax.make_jaxpr(lambda x, w: _ours(x, w, (1, 1), padding))(x, w))

    def vjp(fn):
        y, pullback = jax.vjp(lambda x, w: fn(x, w, (1, 1), padding), x, w)
        return (y, *pullback(cotangent))

    # As (N*H*W, C) rows, forward and backward: with 4-D operands XLA's CPU backend copies the output's
    # gradient into a transposed layout for the kernel's gradient.
    dots = [e for e in jax.make_jaxpr(lambda: vjp(_ours))().jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 3 and all(v.aval.ndim == 2 for e in dots for v in e.invars)

    for ours, ref in zip(vjp(_ours), vjp(_reference_conv)):
        scale = float(jnp.abs(ref).max())
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("kernel, strides, padding, kw", [
    ((3, 3), (1, 1), ((1, 1), (1, 1)), {}),
    ((1, 1), (2, 2), "VALID", {}),            # strided 1x1: a subsampling, left to XLA
    ((1, 1), (1, 1), ((1, 1), (1, 1)), {}),  # padded 1x1
    ((1, 7), (1, 1), ((0, 0), (3, 3)), {}),
    ((1, 1), (1, 1), "VALID", {"feature_group_count": 2}),
])
def test_other_convolutions_are_left_to_xla_unchanged(kernel, strides, padding, kw):
    groups = kw.get("feature_group_count", 1)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 8))
    w = jax.random.normal(jax.random.key(2), (*kernel, 8 // groups, 6))
    ours, ref = _ours(x, w, strides, padding, **kw), _reference_conv(x, w, strides, padding, **kw)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def test_convbn_keeps_its_parameters_and_output():
    """The 1x1 ConvBN has the same variables as before (checkpoints and converters are unaffected)
    and the same output as a plain Flax convolution with the same weights."""
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(3), (2, 5, 5, 16))
    unit = layers.ConvBN(12, 1)
    variables = unit.init(jax.random.key(4), x)
    assert jax.tree.map(jnp.shape, variables["params"]["conv"]) == {"kernel": (1, 1, 16, 12)}
    ours = unit.apply(variables, x)
    plain = nn.Conv(12, (1, 1), padding=((0, 0), (0, 0)), use_bias=False)
    conv = plain.apply({"params": variables["params"]["conv"]}, x)
    bn = variables["params"]["bn"]
    stats = variables["batch_stats"]["bn"]
    expected = jax.nn.relu((conv - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-3) * bn["scale"] + bn["bias"])
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=1e-5, atol=1e-5)



# BatchNorm (layers.BatchNorm: Flax's BatchNorm with a hand-written training-mode gradient whose
# per-channel sums are matrix-vector products on a CPU). Inputs with a non-zero mean, so that the
# variance formula matters.

def _bn_inputs(shape=(4, 11, 9, 24), seed=5):
    kx, kg, ks, kb = jax.random.split(jax.random.key(seed), 4)
    c = shape[-1]
    x = jax.random.normal(kx, shape) * jnp.linspace(0.5, 3.0, c) + jnp.linspace(-2.0, 4.0, c)
    params = {"scale": 1.0 + 0.3 * jax.random.normal(ks, (c,)), "bias": 0.2 * jax.random.normal(kb, (c,))}
    return x, jax.random.normal(kg, shape), params


def _apply_bn(module, params, stats, x, train):
    if train:
        return module.apply({"params": params, "batch_stats": stats}, x, use_running_average=False,
                            mutable=["batch_stats"])
    return module.apply({"params": params, "batch_stats": stats}, x, use_running_average=True), None


def _close(ours, ref, rel=1e-5):
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=0, atol=rel * scale)


@pytest.mark.parametrize("use_scale", [True, False])
def test_batchnorm_has_flaxs_variables_and_its_inference_output_bit_for_bit(use_scale):
    import flax.linen as nn

    x, _, params = _bn_inputs()
    ours = layers.BatchNorm(momentum=0.9, epsilon=1e-3, use_scale=use_scale)
    ref = nn.BatchNorm(momentum=0.9, epsilon=1e-3, use_scale=use_scale)
    v_ours, v_ref = (m.init(jax.random.key(0), x, use_running_average=False) for m in (ours, ref))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), v_ours) == jax.tree.map(lambda a: (a.shape, a.dtype), v_ref)
    jax.tree.map(np.testing.assert_array_equal, v_ours, v_ref)
    assert isinstance(ours, nn.BatchNorm)  # what inception_jax.finetune looks for
    params = params if use_scale else {"bias": params["bias"]}
    stats = {"mean": jnp.linspace(-1.0, 3.0, 24), "var": jnp.linspace(0.5, 4.0, 24)}
    np.testing.assert_array_equal(np.asarray(_apply_bn(ours, params, stats, x, False)[0]),
                                  np.asarray(_apply_bn(ref, params, stats, x, False)[0]))


@pytest.mark.parametrize("use_scale", [True, False])
def test_batchnorm_training_matches_flax_with_running_statistics_and_gradients(use_scale):
    """The same outputs, updated running averages, and gradients for the parameters and the input."""
    import flax.linen as nn

    x, cotangent, params = _bn_inputs()
    params = params if use_scale else {"bias": params["bias"]}
    stats = {"mean": jnp.zeros(24), "var": jnp.ones(24)}

    def run(module):
        (y, updated), pullback = jax.vjp(lambda p, x: _apply_bn(module, p, stats, x, True), params, x)
        return y, updated, pullback((cotangent, jax.tree.map(jnp.zeros_like, updated)))

    kw = dict(momentum=0.9, epsilon=1e-3, use_scale=use_scale)
    ours, ref = run(layers.BatchNorm(**kw)), run(nn.BatchNorm(**kw))
    _close(ours, ref)
    # the running averages moved by (1 - momentum) towards the batch's biased statistics
    np.testing.assert_allclose(ours[1]["batch_stats"]["mean"], 0.1 * x.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(ours[1]["batch_stats"]["var"], 0.9 + 0.1 * x.var((0, 1, 2)), rtol=1e-5)


def test_batchnorm_train_gradient_equals_autodiff_of_the_formula_for_every_output():
    """The hand-written backward pass, fed cotangents for the output *and* the statistics, equals
    autodiff of the same two-pass formula written with plain jnp reductions."""

    def formula(x, scale, bias):
        mean = x.mean((0, 1, 2))
        var = jnp.square(x - mean).mean((0, 1, 2))
        return (x - mean) * jax.lax.rsqrt(var + 1e-3) * scale + bias, mean, var

    x, dy, params = _bn_inputs(seed=6)
    dmean, dvar = jax.random.normal(jax.random.key(7), (2, 24))
    cotangents = (dy, dmean, dvar)
    ours_out, ours_pull = jax.vjp(lambda *a: layers.batch_norm_train(*a, 1e-3), x, params["scale"], params["bias"])
    ref_out, ref_pull = jax.vjp(formula, x, params["scale"], params["bias"])
    _close(ours_out, ref_out)
    _close(ours_pull(cotangents), ref_pull(cotangents))


def test_batchnorm_in_bfloat16_keeps_float32_statistics():
    import flax.linen as nn

    x, _, params = _bn_inputs()
    x = x.astype(jnp.bfloat16)
    stats = {"mean": jnp.zeros(24), "var": jnp.ones(24)}
    kw = dict(momentum=0.9, epsilon=1e-3, dtype=jnp.bfloat16)
    (y, updated), (y_ref, updated_ref) = (_apply_bn(m(**kw), params, stats, x, True)
                                          for m in (layers.BatchNorm, nn.BatchNorm))
    assert y.dtype == jnp.bfloat16 and updated["batch_stats"]["var"].dtype == jnp.float32
    _close(y, y_ref, rel=1e-2)  # one bf16 rounding of the output
    _close(updated, updated_ref)


@pytest.mark.parametrize("use_scale", [True, False])
def test_batchnorm_gradients_take_the_parameters_dtypes(use_scale):
    """bf16 parameters (Keras weights have no `scale`) get bf16 gradients, as autodiff would give them."""
    x = _bn_inputs()[0]
    module = layers.BatchNorm(use_scale=use_scale, param_dtype=jnp.bfloat16)
    variables = module.init(jax.random.key(0), x, use_running_average=False)
    grads = jax.grad(lambda p: jnp.sum(_apply_bn(module, p, variables["batch_stats"], x, True)[0]))(
        variables["params"])
    assert jax.tree.map(lambda g: g.dtype, grads) == jax.tree.map(lambda p: p.dtype, variables["params"])


def test_channel_sum_is_a_matrix_vector_product_on_a_cpu_as_accurate_as_xlas_reduce(monkeypatch):
    """A wide map with a large mean: one product over all N*H*W rows would be 4e-6 off (measured),
    enough to move train-mode logits 5x further from timm's at batch 2; ours is about 1e-7 off. The
    branch other platforms take (XLA's reduce) computes the same sum."""
    x = jax.random.normal(jax.random.key(8), (2, 149, 149, 8)) + 3.0
    exact = np.asarray(x, np.float64).sum((0, 1, 2))
    on_cpu = jax.jit(layers.channel_sum).lower(x).as_text()
    assert "dot_general" in on_cpu and "reduce" in on_cpu  # the product, then the small sum over W
    np.testing.assert_allclose(np.asarray(layers.channel_sum(x), np.float64), exact, rtol=1e-6)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    traced_elsewhere = jax.jit(lambda v: layers.channel_sum(v))  # a new function: not the cached trace
    assert "dot_general" not in traced_elsewhere.lower(x).as_text()
    np.testing.assert_allclose(np.asarray(traced_elsewhere(x), np.float64), exact, rtol=1e-6)


def test_batchnorm_refuses_what_it_does_not_implement():
    x = _bn_inputs()[0]
    with pytest.raises(NotImplementedError, match="flax.linen.BatchNorm"):
        layers.BatchNorm(axis_name="batch").init(jax.random.key(0), x, use_running_average=False)


# Parameters read without tracing their initializers (layers.ShapeCheckedParams).

def _counting(init):
    calls = []

    def counted(key, shape, dtype=jnp.float32):
        calls.append(tuple(shape))
        return init(key, shape, dtype)

    return counted, calls


@pytest.mark.parametrize("kind", ["conv", "dense", "batchnorm"])
def test_apply_reads_parameters_without_running_their_initializers(kind):
    """Flax's own `param` traces the initializer on every apply (to check the shape); ours does not, and
    the module keeps Flax's variables and output."""
    import flax.linen as nn

    init, calls = _counting(nn.initializers.lecun_normal() if kind != "batchnorm" else nn.initializers.ones)
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 6))
    ours, flax_module = {
        "conv": (layers.Conv(4, (3, 3), kernel_init=init), nn.Conv(4, (3, 3), kernel_init=init)),
        "dense": (layers.Dense(4, kernel_init=init), nn.Dense(4, kernel_init=init)),
        "batchnorm": (layers.BatchNorm(use_running_average=True, scale_init=init),
                      nn.BatchNorm(use_running_average=True, scale_init=init)),
    }[kind]
    variables = ours.init(jax.random.key(1), x)
    assert len(calls) == 1
    flax_variables = flax_module.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, flax_variables)
    calls.clear()
    y = ours.apply(variables, x)
    assert calls == [], "our module ran its initializer in apply"
    np.testing.assert_array_equal(np.asarray(y), np.asarray(flax_module.apply(variables, x)))
    assert len(calls) == 1  # Flax's module does: what this saves


@pytest.mark.parametrize("path", [("conv", "kernel"), ("bn", "scale"), ("bn", "bias")])
def test_parameter_of_the_wrong_shape_gets_flaxs_error(path):
    import flax.errors

    x = jnp.ones((2, 5, 5, 3))
    unit = layers.ConvBN(8, 3)
    variables = unit.init(jax.random.key(0), x)
    module, name = path
    wrong = variables["params"][module][name][..., :5]
    variables["params"][module][name] = wrong
    expected = "(3, 3, 3, 8)" if name == "kernel" else "(8,)"
    with pytest.raises(flax.errors.ScopeParamShapeError, match=rf'"{name}" in "/{module}".*{re.escape(expected)}.*'
                                                              rf"{re.escape(str(wrong.shape))}"):
        unit.apply(variables, x)


# Max pool (layers.max_pool: XLA's reduce_window, differentiated by picking the winning tap).

def _xla_max_pool(x, window, strides, padding=0, *, ceil_mode=False, padding_mode="torch"):
    """The same pads as `layers.max_pool`, through Flax's `max_pool`, which XLA differentiates itself."""
    import flax.linen as nn

    window, strides = layers.pair(window), layers.pair(strides)
    if padding_mode == "tf":
        pads = "SAME" if (ceil_mode or any(layers.pair(padding))) else "VALID"
    else:
        ph, pw = layers.pair(padding)
        pads = ((ph, ph), (pw, pw))
        if ceil_mode:
            pads = (layers.ceil_mode_pads(x.shape[1], window[0], strides[0], ph),
                    layers.ceil_mode_pads(x.shape[2], window[1], strides[1], pw))
    return nn.max_pool(x, window, strides, padding=pads)


@pytest.mark.parametrize("shape, window, strides, padding, ceil_mode, padding_mode", [
    ((2, 15, 15, 5), 3, 2, 0, True, "torch"),   # GoogLeNet's reductions (ceil_mode: a last partial window)
    ((2, 14, 14, 4), 3, 1, 1, True, "torch"),   # its branch pools
    ((2, 14, 14, 4), 2, 2, 0, True, "torch"),
    ((2, 17, 17, 6), 3, 2, 0, False, "torch"),  # Inception-v3's reductions
    ((2, 16, 16, 3), 3, 2, 1, True, "tf"),      # TF 'SAME', asymmetric pads
    ((2, 9, 11, 3), (3, 2), (2, 1), 0, False, "torch"),
])
def test_max_pool_equals_xlas_with_gradients_ties_included(shape, window, strides, padding, ceil_mode, padding_mode):
    """Values bit for bit; gradients as XLA's, on post-ReLU inputs full of ties (the first maximum in
    row-major order takes the gradient)."""
    kx, kc = jax.random.split(jax.random.key(7))
    x = jnp.maximum(jnp.round(jax.random.normal(kx, shape) * 2) / 2, 0.0)  # many equal values and zeros
    ours = lambda x: layers.max_pool(x, window, strides, padding, ceil_mode=ceil_mode, padding_mode=padding_mode)
    xla = lambda x: _xla_max_pool(x, window, strides, padding, ceil_mode=ceil_mode, padding_mode=padding_mode)
    y, ours_vjp = jax.vjp(ours, x)
    y_xla, xla_vjp = jax.vjp(xla, x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_xla))
    cotangent = jax.random.normal(kc, y.shape)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda c: ours_vjp(c)[0])(cotangent)),
                               np.asarray(xla_vjp(cotangent)[0]), rtol=1e-6, atol=1e-6)
    # Forward mode is the same linear map: <cotangent, J t> = <J^T cotangent, t> with XLA's J^T. (XLA's
    # own forward mode breaks ties its own way, so it is compared on tie-free inputs.)
    tangent = jax.random.normal(kc, x.shape)
    forward = jax.jvp(ours, (x,), (tangent,))[1]
    np.testing.assert_allclose(float(jnp.vdot(cotangent, forward)), float(jnp.vdot(xla_vjp(cotangent)[0], tangent)),
                               rtol=1e-5)
    untied = jax.random.normal(kx, shape)
    np.testing.assert_array_equal(np.asarray(jax.jvp(ours, (untied,), (tangent,))[1]),
                                  np.asarray(jax.jvp(xla, (untied,), (tangent,))[1]))


def test_max_pool_gradient_has_no_select_and_scatter_and_nan_wins_as_in_pytorch():
    x = jax.random.normal(jax.random.key(0), (1, 6, 6, 2)).at[0, 1, 1, 0].set(jnp.nan)
    grad = jax.jit(jax.grad(lambda x: jnp.nansum(layers.max_pool(x, 3, 2, ceil_mode=True))))
    assert "select-and-scatter" not in grad.lower(x).compile().as_text()
    y = layers.max_pool(x, 3, 2, ceil_mode=True)
    assert bool(jnp.isnan(y[0, 0, 0, 0])) and not bool(jnp.isnan(y[0, 0, 0, 1]))
    assert float(grad(x)[0, 1, 1, 0]) == 0.0  # the NaN won its window; nansum gives it no cotangent
