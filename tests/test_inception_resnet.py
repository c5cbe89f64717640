"""Inception-ResNet-v2 pinned to timm's `inception_resnet_v2` (a calibrated random reference, REFERENCES.md §7);
Inception-ResNet-v1 pinned to the v4 paper's figures through hand-computed parameter counts and shapes.

Parity runs in float64 on both sides, as in test_inception_v4.py: a calibrated random network this deep
amplifies fp32 rounding beyond a 1e-4 tolerance (timm's own fp32 logits are off by ~1e-4 to 1e-3 of
their scale), while in float64 the two agree to ~1e-7. The fp32 path is held to timm's own fp32 error.
`residual_scales` is checked against timm with its blocks' `scale` attributes set to the same values.

Cost control (2 shared cores): one calibrated timm model per module, batch 1, one jit per
(options, dtype, shape); parameter counts come from `eval_shape`.
"""

from __future__ import annotations

import contextlib
import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import (
    assert_float32_as_exact_as_reference,
    assert_logits_close,
    calibrate_batchnorm,
    nchw,
    torch,
    torch_state_dict,
)

from inception_jax.models import profile, registry, stacking
from inception_jax.tools.convert import from_torch

timm = pytest.importorskip("timm")

IR2_PARAMS = 55_843_464  # timm inception_resnet_v2 (REFERENCES.md §1)
IR2_PARAMS_AUX = 59_211_120  # with TF-slim's aux head (REFERENCES.md §1)
IR1_PARAMS = 22_756_328  # the v4 paper's IR-v1 at 1000 classes, gamma and beta counted (REFERENCES.md §1)
SMALL = 107  # the second parity size: the 35/17/8 grids are 11, 5 and 2 (299: 35, 17, 8)
TIMM_TAPS = ("conv2d_2b", "conv2d_4a", "repeat", "repeat_1", "conv2d_7b")  # timm's feature_info
SCALES = (0.3, 0.05, 0.5)  # residual scales for the switch test (defaults 0.17, 0.10, 0.20)


def images(size: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3))


def param_count(name: str, size: int = 299, **options) -> int:
    model = registry.create_model(name, **options)
    return profile.count_params(profile.abstract_variables(model, size)["params"])


@functools.cache
def jitted_apply(name: str, endpoints: bool = False, **options):
    model = registry.create_model(name, **options)
    if endpoints:
        return jax.jit(lambda v, x: model.apply(v, x, train=False, return_endpoints=True))
    return jax.jit(lambda v, x: model.apply(v, x, train=False)[0])


def apply64(variables, x, kernels="auto", **options):
    """IR-v2 in float64 (parameters and activations): logits and timm's feature_info taps, NCHW."""
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        fn = jitted_apply("inception_resnet_v2", endpoints=True, param_dtype=jnp.float64, kernels=kernels, **options)
        logits, out = fn(v64, jnp.asarray(x, jnp.float64))
        return np.asarray(logits), [np.asarray(out[k]).transpose(0, 3, 1, 2) for k in TIMM_TAPS]


def bn_conv(cin: int, cout: int, kh: int, kw: int | None = None) -> int:
    """Parameters of a bias-free conv + BatchNorm (gamma, beta)."""
    return cin * cout * kh * (kh if kw is None else kw) + 2 * cout


def up_conv(cin: int, cout: int) -> int:
    """The residual "up" 1x1 conv: weights and bias, no BatchNorm."""
    return cin * cout + cout


def nxn_pair_delta(cin: int, mid: int, out: int, n: int) -> int:
    """(1xn cin->mid + BN, nx1 mid->out + BN) -> one nxn cin->out + BN."""
    return bn_conv(cin, out, n) - bn_conv(cin, mid, 1, n) - bn_conv(mid, out, n, 1)


# ----------------------------------------------------------------------------------------------
# Inception-ResNet-v2: references (module-scoped) and parity
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_ir2():
    torch.manual_seed(0)
    return calibrate_batchnorm(timm.create_model("inception_resnet_v2"), 299, passes=2, batch=2)


@pytest.fixture(scope="module")
def timm_ir2_64(timm_ir2):
    return copy.deepcopy(timm_ir2).double()


@pytest.fixture(scope="module")
def variables(timm_ir2):
    return from_torch("inception_resnet_v2", torch_state_dict(timm_ir2))


@pytest.mark.parametrize("size, kernels", [(299, "auto"), (SMALL, "auto"), (SMALL, "xla")])
def test_float64_logits_and_stages_match_timm(timm_ir2_64, variables, size, kernels):
    """With the CPU forms ("auto" on this CPU) and with XLA's operations."""
    x = images(size)
    with torch.no_grad():
        features, taps = timm_ir2_64.forward_intermediates(nchw(x))
        theirs = timm_ir2_64.forward_head(features).numpy()
    logits, ours_taps = apply64(variables, x, kernels=kernels)
    assert_logits_close(logits, theirs, rel=1e-6)
    for name, ours, ref in zip(TIMM_TAPS, ours_taps, taps):
        ref = ref.numpy()
        assert ours.shape == ref.shape, name
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6 * np.abs(ref).max(), err_msg=name)


@contextlib.contextmanager
def timm_residual_scales(model, scales):
    """Temporarily sets timm's per-block `scale` for repeat / repeat_1 / repeat_2 (block8 keeps 1.0)."""
    stages = (model.repeat, model.repeat_1, model.repeat_2)
    saved = [[block.scale for block in stage] for stage in stages]
    try:
        for stage, scale in zip(stages, scales):
            for block in stage:
                block.scale = scale
        yield model
    finally:
        for stage, old in zip(stages, saved):
            for block, scale in zip(stage, old):
                block.scale = scale


def test_float32_with_other_residual_scales_matches_timm(timm_ir2, timm_ir2_64, variables):
    """Two checks on one compile. `residual_scales` reaches the right blocks: timm with the same
    scales agrees with us, and the logits move away from the default-scale ones while the parameter
    count stays. The fp32 path is as close to the exact (float64) answer as timm's own fp32 run."""
    x = images(SMALL)
    with torch.no_grad(), timm_residual_scales(timm_ir2_64, SCALES), timm_residual_scales(timm_ir2, SCALES):
        exact = timm_ir2_64(nchw(x)).numpy()
        timm32 = timm_ir2(nchw(x.astype(np.float32))).numpy()
    ours = np.asarray(jitted_apply("inception_resnet_v2", residual_scales=SCALES)(variables, x.astype(np.float32)))
    assert_float32_as_exact_as_reference(ours, timm32, exact)
    assert_logits_close(ours, exact, rel=1e-2)  # and plainly close, whatever timm's own error

    default, _ = apply64(variables, x)  # compiled by the parity test at this size
    assert np.abs(exact - default).max() > 0.05 * np.abs(default).max()
    assert param_count("inception_resnet_v2", residual_scales=SCALES) == IR2_PARAMS


def test_every_timm_tensor_has_a_home(timm_ir2, variables):
    """timm's 1306 tensors (REFERENCES.md §3.4) all land in our tree, Sequential indices joined with `_`:
    `repeat_1.0.branch0.conv.weight` -> `repeat_1_0/branch0/conv/kernel`, `repeat.0...` -> `repeat_0/...`."""
    state = torch_state_dict(timm_ir2)
    assert len(state) == 1306
    tracked = sum(k.endswith("num_batches_tracked") for k in state)
    assert len(jax.tree.leaves(variables)) == len(state) - tracked
    p = variables["params"]
    np.testing.assert_array_equal(
        p["repeat_1_0"]["branch0"]["conv"]["kernel"], state["repeat_1.0.branch0.conv.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(p["repeat_0"]["conv2d"]["bias"], state["repeat.0.conv2d.bias"])
    np.testing.assert_array_equal(p["block8"]["conv2d"]["bias"], state["block8.conv2d.bias"])
    assert "bn" not in p["repeat_2_0"]["conv2d"]  # the "up" conv: biased, no BatchNorm
    # For a model with scanned stages, each stage's blocks arrive stacked in block order.
    stacked = from_torch("inception_resnet_v2", state, scan_blocks=True)
    np.testing.assert_array_equal(
        stacked["params"]["repeat_1_0-19"]["block"]["branch0"]["conv"]["kernel"][7],
        state["repeat_1.7.branch0.conv.weight"].transpose(2, 3, 1, 0),
    )
    unrolled = registry.create_model("inception_resnet_v2")
    jax.tree.map(np.testing.assert_array_equal, stacking.to_layout(stacked, unrolled), variables)


# ----------------------------------------------------------------------------------------------
# Inception-ResNet-v2: counts and switches
# ----------------------------------------------------------------------------------------------


def test_ir2_param_counts_match_timm_and_the_slim_aux_head():
    assert param_count("inception_resnet_v2") == IR2_PARAMS
    # Aux head on PreAuxLogits (1088 channels, 17x17 -> pool 5x5/3 -> 5x5): 1x1 128, 5x5 768, fc 1000.
    aux = bn_conv(1088, 128, 1) + bn_conv(128, 768, 5) + 768 * 1000 + 1000
    assert aux == 3_367_656
    assert param_count("inception_resnet_v2", aux_logits=True) == IR2_PARAMS_AUX == IR2_PARAMS + aux


def test_ir2_factorize_nxn_false_changes_params_by_the_hand_computed_amount():
    delta = (
        20 * nxn_pair_delta(128, 160, 192, 7)  # Block17 x20: 1x7 160, 7x1 192 -> 7x7 192
        + 10 * nxn_pair_delta(192, 224, 256, 3)
    )  # Block8 x9 + block8: 1x3 224, 3x1 256 -> 3x3 256
    assert delta == 18_318_720
    assert param_count("inception_resnet_v2", factorize_nxn=False) == IR2_PARAMS + delta


def test_ir2_aux_head_in_train_mode():
    model = registry.create_model("inception_resnet_v2", aux_logits=True, num_classes=10)
    variables = profile.abstract_variables(model, 299)
    assert variables["params"]["AuxLogits"]["conv0"]["conv"]["kernel"].shape == (1, 1, 1088, 128)
    x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
    (logits, out), _ = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}),
        variables,
        x,
    )
    assert logits.shape == (2, 10) and [a.shape for a in out["aux_logits"]] == [(2, 10)]


# ----------------------------------------------------------------------------------------------
# Inception-ResNet-v1 (paper Figs. 10-15): no library reference, so the paper's numbers pin it
# ----------------------------------------------------------------------------------------------


def test_ir1_param_count_matches_the_paper_config_by_hand():
    stem = (
        bn_conv(3, 32, 3)
        + bn_conv(32, 32, 3)
        + bn_conv(32, 64, 3)
        + bn_conv(64, 80, 1)
        + bn_conv(80, 192, 3)
        + bn_conv(192, 256, 3)
    )  # Fig. 14
    block_a = (
        bn_conv(256, 32, 1)
        + bn_conv(256, 32, 1)
        + bn_conv(32, 32, 3)
        + bn_conv(256, 32, 1)
        + bn_conv(32, 32, 3)
        + bn_conv(32, 32, 3)
        + up_conv(96, 256)
    )  # Fig. 10
    reduction_a = bn_conv(256, 384, 3) + bn_conv(256, 192, 1) + bn_conv(192, 192, 3) + bn_conv(192, 256, 3)  # Fig. 7
    block_b = (
        bn_conv(896, 128, 1)
        + bn_conv(896, 128, 1)
        + bn_conv(128, 128, 1, 7)
        + bn_conv(128, 128, 7, 1)
        + up_conv(256, 896)
    )  # Fig. 11
    reduction_b = (
        bn_conv(896, 256, 1)
        + bn_conv(256, 384, 3)
        + bn_conv(896, 256, 1)
        + bn_conv(256, 256, 3)
        + bn_conv(896, 256, 1)
        + bn_conv(256, 256, 3)
        + bn_conv(256, 256, 3)
    )  # Fig. 12
    block_c = (
        bn_conv(1792, 192, 1)
        + bn_conv(1792, 192, 1)
        + bn_conv(192, 192, 1, 3)
        + bn_conv(192, 192, 3, 1)
        + up_conv(384, 1792)
    )  # Fig. 13
    total = stem + 5 * block_a + reduction_a + 10 * block_b + reduction_b + 5 * block_c + 1792 * 1000 + 1000
    assert total == IR1_PARAMS
    assert param_count("inception_resnet_v1") == IR1_PARAMS
    # facenet's variant adds a sixth, unscaled C block: REFERENCES.md §1's 24,357,096.
    assert IR1_PARAMS + block_c == 24_357_096


def test_ir1_grid_sizes_follow_the_paper():
    model = registry.create_model("inception_resnet_v1")
    variables = profile.abstract_variables(model, 299)
    x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
    _, out = jax.eval_shape(lambda v, x: model.apply(v, x, return_endpoints=True), variables, x)
    shapes = {k: v.shape[1:] for k, v in out.items() if k not in ("pre_logits", "aux_logits")}
    assert shapes == {
        "conv2d_1a": (149, 149, 32),
        "conv2d_2a": (147, 147, 32),
        "conv2d_2b": (147, 147, 64),
        "conv2d_3b": (73, 73, 80),
        "conv2d_4a": (71, 71, 192),
        "conv2d_4b": (35, 35, 256),
        "repeat": (35, 35, 256),
        "mixed_6a": (17, 17, 896),
        "repeat_1": (17, 17, 896),
        "mixed_7a": (8, 8, 1792),
        "repeat_2": (8, 8, 1792),
    }  # Figs. 14, 7, 12
    assert out["pre_logits"].shape == (1, 1792)


def test_ir1_switches_change_params_as_computed():
    assert param_count("inception_resnet_v1", residual_scales=SCALES) == IR1_PARAMS
    delta = 10 * nxn_pair_delta(128, 128, 128, 7) + 5 * nxn_pair_delta(192, 192, 192, 3)
    assert delta == 6_282_880
    assert param_count("inception_resnet_v1", factorize_nxn=False) == IR1_PARAMS + delta
    aux = bn_conv(896, 128, 1) + bn_conv(128, 768, 5) + 768 * 1000 + 1000  # same slim head, 896 channels
    assert param_count("inception_resnet_v1", aux_logits=True) == IR1_PARAMS + aux == 26_099_408


def test_ir1_residual_scales_change_the_output():
    """Same variables, other scales: the logits move (IR-v1 shares IR-v2's residual code, which the timm
    test pins block by block)."""
    model = registry.create_model("inception_resnet_v1")
    shapes = profile.abstract_variables(model, 75)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        if path[-1].key == "kernel":
            return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]) / 2)).astype(np.float32)
        return np.ones(leaf.shape, np.float32) if path[-1].key in ("scale", "var") else np.zeros(leaf.shape, np.float32)

    v = jax.tree_util.tree_map_with_path(fill, shapes)
    x = images(75).astype(np.float32)
    default = np.asarray(jitted_apply("inception_resnet_v1")(v, x))
    scaled = np.asarray(jitted_apply("inception_resnet_v1", residual_scales=SCALES)(v, x))
    assert np.all(np.isfinite(default)) and np.std(default) > 1e-3
    assert np.abs(scaled - default).max() > 0.01 * np.abs(default).max()


@pytest.mark.parametrize("name", ["inception_resnet_v1", "inception_resnet_v2"])
def test_below_the_minimum_size_raises_naming_75(name):
    model = registry.create_model(name)
    variables = profile.abstract_variables(model, 75)
    with pytest.raises(ValueError, match="75"):
        jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.zeros((1, 74, 74, 3)))
    logits, _ = jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.zeros((1, 75, 75, 3)))
    assert logits.shape == (1, 1000)
