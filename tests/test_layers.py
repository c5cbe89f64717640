"""Layer reformulations made for speed compute the same function as the operation they replace."""

from __future__ import annotations

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
    assert "dot_general" in str(jax.make_jaxpr(lambda x, w: _ours(x, w, (1, 1), padding))(x, w))

    def vjp(fn):
        y, pullback = jax.vjp(lambda x, w: fn(x, w, (1, 1), padding), x, w)
        return (y, *pullback(cotangent))

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

