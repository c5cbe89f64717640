"""Our CPU compiler options: convolutions leave YNNPACK, compute the same function, and reach every step."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from inception_jax import kernels
from inception_jax.trainer import parallel, train, validation
from inception_jax.trainer.config import base_config

NHWC = ("NHWC", "HWIO", "NHWC")
EIGEN = kernels.compiler_options(jax.devices())


def _ynnpack_convolutions(compiled) -> int:
    """How many convolutions of a compiled CPU program run inside a YNNPACK fusion."""
    text = compiled.as_text()
    fused = set(re.findall(r'calls=%([\w.-]+).*"kind":"__ynn_fusion"', text))
    count = 0
    for block in re.split(r"\n(?=\S)", text):  # one computation per block
        name = re.match(r"%?([\w.-]+)", block)
        if name and name.group(1) in fused:
            count += block.count(" convolution(")
    return count


def test_options_are_for_cpus_only_and_checked():
    assert EIGEN == {"xla_cpu_experimental_ynn_fusion_type": ""}
    assert kernels.compiler_options(jax.devices(), "ynnpack") is None
    assert kernels.compiler_options(parallel.make_mesh()) == EIGEN
    assert kernels.compiler_options(jax.devices()[0]) == EIGEN
    with pytest.raises(ValueError, match="convolutions='xnnpack'; expected one of"):
        kernels.compiler_options(jax.devices(), "xnnpack")
    c = base_config()
    c.xla_cpu_convolutions = "xnnpack"
    with pytest.raises(
        validation.ConfigError, match="config.xla_cpu_convolutions='xnnpack' is not one of 'eigen', 'ynnpack'"
    ):
        validation.validated(c)


# The shapes the family is made of, at batch 2: the stem's wide maps with few channels, an RGB input
# layer, a strided reduction, the factorised 1x7 and a padded 3x3 deep in the network. (XLA gives
# YNNPACK only convolutions above a size: with 16 channels it keeps them itself.)
@pytest.mark.parametrize(
    "shape, kernel, strides, padding",
    [
        ((2, 37, 37, 32), (3, 3, 32, 32), (1, 1), "VALID"),
        ((2, 75, 75, 3), (3, 3, 3, 32), (2, 2), "VALID"),
        ((2, 35, 35, 48), (3, 3, 48, 64), (2, 2), "VALID"),
        ((2, 17, 17, 64), (1, 7, 64, 64), (1, 1), ((0, 0), (3, 3))),
        ((2, 35, 35, 64), (3, 3, 64, 96), (1, 1), "SAME"),
    ],
)
def test_eigen_convolutions_compute_what_ynnpack_computes_with_gradients(shape, kernel, strides, padding):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, kernel) * 0.2

    def forward_and_grads(x, w):
        conv = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
        y, pullback = jax.vjp(conv, x, w)
        return (y, *pullback(jax.random.normal(kg, y.shape)))

    programs = {
        name: jax.jit(forward_and_grads).lower(x, w).compile(compiler_options=options)
        for name, options in [("ynnpack", None), ("eigen", EIGEN)]
    }
    assert _ynnpack_convolutions(programs["eigen"]) == 0
    assert _ynnpack_convolutions(programs["ynnpack"]) > 0  # XLA's default, or the option would be moot
    for ours, ref in zip(programs["eigen"](x, w), programs["ynnpack"](x, w)):
        scale = float(jnp.abs(ref).max())
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=0, atol=1e-5 * scale)


class _OneConv(nn.Module):
    """A convolution large enough for XLA to give YNNPACK by default, then BatchNorm and a classifier."""

    in_channels: int = 32

    @nn.compact
    def __call__(self, x, train=False, return_endpoints=False):
        h = nn.Conv(32, (3, 3), use_bias=False, name="conv")(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(h)
        feats = jnp.mean(jax.nn.relu(h), axis=(1, 2))
        return nn.Dense(2, name="fc")(feats), {"pre_logits": feats, "aux_logits": ()}


@pytest.mark.parametrize("convolutions, in_ynnpack", [("eigen", False), ("ynnpack", True)])
def test_the_trainers_steps_compile_with_config_xla_cpu_convolutions(convolutions, in_ynnpack):
    c = base_config()
    c.model.name = "googlenet"
    c.total_steps = 1
    c.xla_cpu_convolutions = convolutions
    config = validation.validated(c)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, tx = _OneConv(), optax.sgd(0.1)
    state = train.init_state(model, tx, config, 37, jax.random.key(0))
    images = jax.ShapeDtypeStruct((2, 37, 37, 32), jnp.float32)
    labels = jax.ShapeDtypeStruct((2,), jnp.int32)
    train_step = train.make_train_step(model, tx, lambda s: 0.1, config, 2, mesh)
    compiled = train_step.lower(state, {"image": images, "label": labels}, jax.random.key(1)).compile()
    assert (_ynnpack_convolutions(compiled) > 0) == in_ynnpack
    eval_step = train.make_eval_step(model, mesh, config)
    mask = jax.ShapeDtypeStruct((2,), jnp.bool_)
    compiled = eval_step.lower(
        state.params, state.batch_stats, {"image": images, "label": labels, "mask": mask}
    ).compile()
    assert (_ynnpack_convolutions(compiled) > 0) == in_ynnpack
