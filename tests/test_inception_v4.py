"""Inception-v4 pinned to timm's `inception_v4` (a calibrated random reference, REFERENCES.md §7), to the
reference parameter counts, and to hand-computed counts for the TF-slim aux head and `factorize_nxn`.

Why float64: a calibrated random v4 is numerically chaotic. At 299 timm's own fp32 logits differ from
its float64 logits by ~5e-4 of their scale (measured: 5.8e-4 at scale 1.04; ours 6.7e-4), more than a
1e-4 tolerance allows. So exact parity is checked with both sides in float64, where the two agree to
~1e-7 (the fp32 global pool), and the fp32 path is held to timm's own fp32 error.

Cost control (2 shared cores): one calibrated timm model per module, batch 1, one jit per
(options, dtype, shape); parameter counts come from `eval_shape`.
"""

from __future__ import annotations

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

from inception_jax.models import profile, registry
from inception_jax.tools.convert import from_torch

timm = pytest.importorskip("timm")

V4_PARAMS = 42_679_816  # timm inception_v4 (REFERENCES.md §1)
V4_PARAMS_AUX = 46_039_280  # with TF-slim's aux head (REFERENCES.md §1)
SMALL = 107  # the second parity size: the 35/17/8 grids are 11, 5 and 2 (299: 35, 17, 8)
TIMM_TAPS = ("features_2", "features_3", "features_9", "features_17", "features_21")  # timm feature_info


def images(size: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3))


def param_count(size: int = 299, **options) -> int:
    model = registry.create_model("inception_v4", **options)
    return profile.count_params(profile.abstract_variables(model, size)["params"])


@functools.cache
def jitted_apply(endpoints: bool = False, **options):
    model = registry.create_model("inception_v4", **options)
    if endpoints:
        return jax.jit(lambda v, x: model.apply(v, x, train=False, return_endpoints=True))
    return jax.jit(lambda v, x: model.apply(v, x, train=False)[0])


def apply64(variables, x, kernels="auto", **options):
    """Our model in float64 (parameters and activations): logits and timm's feature_info taps, NCHW."""
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        logits, out = jitted_apply(endpoints=True, param_dtype=jnp.float64, kernels=kernels, **options)(
            v64, jnp.asarray(x, jnp.float64)
        )
        return np.asarray(logits), [np.asarray(out[k]).transpose(0, 3, 1, 2) for k in TIMM_TAPS]


# ----------------------------------------------------------------------------------------------
# References (module-scoped: building and calibrating them is the expensive part)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_v4():
    torch.manual_seed(0)
    return calibrate_batchnorm(timm.create_model("inception_v4"), 299, passes=2, batch=2)


@pytest.fixture(scope="module")
def timm_v4_64(timm_v4):
    return copy.deepcopy(timm_v4).double()


@pytest.fixture(scope="module")
def variables(timm_v4):
    return from_torch("inception_v4", torch_state_dict(timm_v4))


# ----------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, kernels", [(299, "auto"), (SMALL, "auto"), (SMALL, "xla")])
def test_float64_logits_and_stages_match_timm(timm_v4_64, variables, size, kernels):
    """With the CPU forms ("auto" on this CPU) and with XLA's operations."""
    x = images(size)
    with torch.no_grad():
        features, taps = timm_v4_64.forward_intermediates(nchw(x))
        theirs = timm_v4_64.forward_head(features).numpy()
    logits, ours_taps = apply64(variables, x, kernels=kernels)
    assert_logits_close(logits, theirs, rel=1e-6)
    for name, ours, ref in zip(TIMM_TAPS, ours_taps, taps):
        ref = ref.numpy()
        assert ours.shape == ref.shape, name
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6 * np.abs(ref).max(), err_msg=name)


def test_float32_logits_are_as_close_to_exact_as_timms(timm_v4, timm_v4_64, variables):
    x = images(SMALL)
    with torch.no_grad():
        exact = timm_v4_64(nchw(x)).numpy()
        timm32 = timm_v4(nchw(x.astype(np.float32))).numpy()
    ours = np.asarray(jitted_apply()(variables, x.astype(np.float32)))
    assert_float32_as_exact_as_reference(ours, timm32, exact)


def test_padding_mode_tf_is_the_same_network(variables):
    """Every padded op is stride 1 with an odd kernel and every stride-2 op VALID, so TF 'SAME' = timm."""
    x = images(SMALL).astype(np.float32)
    torch_mode = np.asarray(jitted_apply()(variables, x))
    tf_mode = np.asarray(jitted_apply(padding_mode="tf")(variables, x))
    np.testing.assert_allclose(tf_mode, torch_mode, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Counts and switches
# ----------------------------------------------------------------------------------------------


def bn_conv(cin: int, cout: int, kh: int, kw: int | None = None) -> int:
    """Parameters of a bias-free conv + BatchNorm (gamma, beta)."""
    return cin * cout * kh * (kh if kw is None else kw) + 2 * cout


def test_param_counts_match_timm_and_the_slim_aux_head():
    assert param_count() == V4_PARAMS
    # Aux head on Mixed_6h (1024 channels, 17x17 -> pool 5x5/3 -> 5x5): 1x1 128, 5x5 768, fc 1000.
    aux = bn_conv(1024, 128, 1) + bn_conv(128, 768, 5) + 768 * 1000 + 1000
    assert aux == 3_359_464
    assert param_count(aux_logits=True) == V4_PARAMS_AUX == V4_PARAMS + aux


def test_aux_head_runs_in_train_mode_and_at_the_minimum_size():
    """In train mode the aux logits come back; at 75 the 3x3 map shrinks the pool and the 768 kernel."""
    model = registry.create_model("inception_v4", aux_logits=True, num_classes=10)
    for size, kernel in ((299, 5), (75, 1)):
        variables = profile.abstract_variables(model, size)
        assert variables["params"]["AuxLogits"]["conv1"]["conv"]["kernel"].shape == (kernel, kernel, 128, 768)
        x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
        (logits, out), _ = jax.eval_shape(
            lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}),
            variables,
            x,
        )
        assert logits.shape == (2, 10) and [a.shape for a in out["aux_logits"]] == [(2, 10)]
        eval_logits, eval_out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
        assert eval_out["aux_logits"] == ()


def test_factorize_nxn_false_changes_params_by_the_hand_computed_amount():
    """Each sequential 1xn/nx1 pair -> one nxn conv of the pair's output width; each of Inception-C's
    parallel 1x3 | 3x1 splits -> one 3x3 conv of both halves' width."""

    def pair(cin, mid, out, n):  # (1xn cin->mid + BN, nx1 mid->out + BN) -> nxn cin->out + BN
        return bn_conv(cin, out, n) - bn_conv(cin, mid, 1, n) - bn_conv(mid, out, n, 1)

    def split(cin, width):  # (1x3 cin->w + BN | 3x1 cin->w + BN) -> 3x3 cin->2w + BN
        return bn_conv(cin, 2 * width, 3) - 2 * bn_conv(cin, width, 1, 3)

    delta = (
        pair(64, 64, 64, 7)  # Mixed4a branch1
        + 7 * (pair(192, 224, 256, 7) + pair(192, 192, 224, 7) + pair(224, 224, 256, 7))  # Inception-B x7
        + pair(256, 256, 320, 7)  # Reduction-B branch1
        + 3 * (pair(384, 448, 512, 3) + split(384, 256) + split(512, 256))  # Inception-C x3
    )
    assert delta == 50_246_656
    assert param_count(factorize_nxn=False) == V4_PARAMS + delta
    # The merged convs take the first conv's name.
    params = profile.abstract_variables(registry.create_model("inception_v4", factorize_nxn=False), 299)["params"]
    assert params["features_11"]["branch1_1"]["conv"]["kernel"].shape == (7, 7, 192, 256)
    assert "branch1_2" not in params["features_11"]
    assert params["features_19"]["branch1_1"]["conv"]["kernel"].shape == (3, 3, 384, 512)


def test_every_timm_tensor_has_a_home(timm_v4, variables):
    """timm's 896 state_dict tensors (REFERENCES.md §3.4) all land in our tree; `from_torch` would
    already have raised on any missing, unexpected or mis-shaped one."""
    state = torch_state_dict(timm_v4)
    assert len(state) == 896
    tracked = sum(k.endswith("num_batches_tracked") for k in state)
    assert len(jax.tree.leaves(variables)) == len(state) - tracked
    kernel = variables["params"]["features_21"]["branch2_3b"]["conv"]["kernel"]
    np.testing.assert_array_equal(kernel, state["features.21.branch2_3b.conv.weight"].transpose(2, 3, 1, 0))


def test_below_the_minimum_size_raises_naming_75():
    model = registry.create_model("inception_v4")
    variables = profile.abstract_variables(model, 75)
    with pytest.raises(ValueError, match="75"):
        jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.zeros((1, 74, 74, 3)))
    logits, _ = jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.zeros((1, 75, 75, 3)))
    assert logits.shape == (1, 1000)
