"""GoogLeNet: parity with torchvision's `googlenet`, parameter counts, and the paper's design switches."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import fake_variables, jit_apply

import inception_jax as ij
from inception_jax.models import googlenet as gn
from inception_jax.models import layers, profile
from inception_jax.tools.convert import from_torch

# torchvision's own numbers (GoogLeNet_Weights meta; REFERENCES.md §1).
PARAMS = 6_624_904
PARAMS_WITH_AUX = 13_004_888

# The architecture table (paper Table 1 = torchvision): 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj.
TABLE = list(gn.INCEPTION_BLOCKS.values())
STEM = 3 * 7 * 7 * 64 + 2 * 64 + 64 * 64 + 2 * 64 + 64 * 3 * 3 * 192 + 2 * 192  # conv1, conv2, conv3 (+BN)


def n_params(model, size: int = 224) -> int:
    return profile.count_params(profile.abstract_variables(model, size)["params"])


def run(model, x, train=False, variables=None):
    variables = variables or fake_variables(model, x.shape[1])
    if train:
        (logits, out), _ = jit_apply(
            model,
            variables,
            x,
            train=True,
            return_endpoints=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(1)},
        )
    else:
        logits, out = jit_apply(model, variables, x, train=False, return_endpoints=True)
    return logits, out


def images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


# ----------------------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def torchvision_googlenet():
    rm = pytest.importorskip("reference_models")
    torchvision = pytest.importorskip("torchvision")
    rm.torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=False, init_weights=True)
    return rm.calibrate_batchnorm(model, 224)


@pytest.mark.parametrize("size", [224, 113])
def test_eval_logits_match_torchvision(torchvision_googlenet, size):
    # 113 exercises every ceil_mode end-pad but maxpool1's, an odd 7x7 map at maxpool4 and
    # overlapping adaptive-pool windows (7 -> 4); 224 is the reference resolution.
    rm = pytest.importorskip("reference_models")
    state = rm.torch_state_dict(torchvision_googlenet)
    variables = from_torch("googlenet", state, drop_aux=True)
    model = ij.create_model("googlenet")
    x = images(2, size)
    with rm.torch.no_grad():
        theirs = torchvision_googlenet.eval()(rm.nchw(x)).numpy()
    ours, _ = jax.jit(functools.partial(model.apply, train=False))(variables, x)
    rm.assert_logits_close(ours, theirs)


@pytest.mark.parametrize("kernels", ["auto", "xla"])
def test_train_mode_aux_heads_match_torchvision(torchvision_googlenet, kernels):
    """Train mode (BN on batch statistics on both sides), dropout off: logits, aux1 and aux2 agree, with
    the CPU forms ("auto" on this CPU) and with XLA's operations.

    This also checks `torchvision_fixup`: a wrong fc1 column order changes both aux outputs.
    """
    rm = pytest.importorskip("reference_models")
    import copy

    state = rm.torch_state_dict(torchvision_googlenet)
    variables = from_torch("googlenet", state, aux_logits=True)
    model = ij.create_model("googlenet", aux_logits=True, dropout_rate=0.0, aux_dropout_rate=0.0, kernels=kernels)
    reference = copy.deepcopy(torchvision_googlenet)  # train mode updates running stats
    for m in reference.modules():
        if isinstance(m, rm.torch.nn.Dropout):
            m.p = 0.0
    x = images(2, 224, seed=1)
    with rm.torch.no_grad():
        theirs = reference.train()(rm.nchw(x))  # GoogLeNetOutputs(logits, aux_logits2, aux_logits1)
    apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    (logits, out), _ = apply(variables, x)
    aux1, aux2 = out["aux_logits"]
    rm.assert_logits_close(logits, theirs.logits.numpy())
    rm.assert_logits_close(aux1, theirs.aux_logits1.numpy())
    rm.assert_logits_close(aux2, theirs.aux_logits2.numpy())


def test_fixup_moves_only_the_aux_fc1_columns():
    w = np.arange(3 * 2048, dtype=np.float32).reshape(3, 2048)
    fixed = gn.torchvision_fixup({"aux1.fc1.weight": w, "fc.weight": w})
    assert fixed["fc.weight"] is w
    # NHWC column (h, w, c) must hold NCHW column c*16 + h*4 + w.
    h, ww, c = 2, 3, 77
    np.testing.assert_array_equal(fixed["aux1.fc1.weight"][:, h * 512 + ww * 128 + c], w[:, c * 16 + h * 4 + ww])


def test_adaptive_avg_pool_matches_pytorch():
    rm = pytest.importorskip("reference_models")
    for size in (14, 7, 6, 5, 3, 1):
        x = images(1, size)[..., :2]
        theirs = rm.torch.nn.functional.adaptive_avg_pool2d(rm.nchw(x), 4).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(layers.adaptive_avg_pool(jnp.asarray(x), 4), theirs, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------- sizes and counts


def test_param_counts_match_torchvision():
    assert n_params(ij.create_model("googlenet")) == PARAMS
    with_aux = ij.create_model("googlenet", aux_logits=True)
    assert with_aux.num_aux_heads == 2
    assert n_params(with_aux) == PARAMS_WITH_AUX


def hand_count(naive: bool = False, kernel: int = 3, num_classes: int = 1000) -> int:
    """Parameters of the BN network from the table alone: conv weights + BN gamma/beta, then the fc."""
    total, c_in = STEM, 192
    for ch1, red3, ch3, red5, ch5, proj in TABLE:
        if naive:  # Fig. 2a: convs read the module input directly; the pool branch passes it through
            total += c_in * ch1 + 9 * c_in * ch3 + kernel * kernel * c_in * ch5 + 2 * (ch1 + ch3 + ch5)
            c_in += ch1 + ch3 + ch5
        else:
            total += (
                c_in * ch1
                + c_in * red3
                + 9 * red3 * ch3
                + c_in * red5
                + kernel * kernel * red5 * ch5
                + c_in * proj
                + 2 * (ch1 + red3 + ch3 + red5 + ch5 + proj)
            )
            c_in = ch1 + ch3 + ch5 + proj
    return total + c_in * num_classes + num_classes


def test_hand_count_reproduces_torchvision():
    assert hand_count() == PARAMS  # validates the formula the switch tests rely on


def test_branch3_kernel_5_adds_16_weights_per_reduced_channel_pair():
    # A 5x5 kernel has 25 - 9 = 16 more taps than the 3x3 for every (5x5 reduce, 5x5) channel pair:
    # 16 * (16*32 + 32*96 + 16*48 + 24*64 + 24*64 + 32*64 + 32*128 + 32*128 + 48*128) = 16 * 23,808.
    assert sum(red5 * ch5 for _, _, _, red5, ch5, _ in TABLE) == 23_808
    model = ij.create_model("googlenet", branch3_kernel=5)
    assert n_params(model) - PARAMS == 16 * 23_808 == 380_928
    assert hand_count(kernel=5) == PARAMS + 380_928
    logits, _ = run(model, images(1, 64))
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()


def test_lrn_form_trades_bn_gamma_beta_for_a_conv_bias():
    # Each conv loses BN's gamma and beta (2 per output channel) and gains a bias (1): -1 per channel.
    # Output channels: stem 64 + 64 + 192 = 320; modules (sum of the six widths per row of the table)
    # 368 + 640 + 624 + 648 + 664 + 704 + 1024 + 1024 + 1264 = 6,960; total 7,280.
    assert sum(map(sum, TABLE)) == 6_960
    model = ij.create_model("googlenet", norm="lrn")
    assert n_params(model) == PARAMS - 7_280
    # With aux heads each aux conv (128 channels) does the same: -256 more.
    assert n_params(ij.create_model("googlenet", norm="lrn", aux_logits=True)) == PARAMS_WITH_AUX - 7_280 - 256
    variables = fake_variables(model)
    assert "batch_stats" not in variables
    assert variables["params"]["conv1"]["conv"]["bias"].shape == (64,)
    logits, _ = run(model, images(2, 64), train=True, variables=variables)
    assert np.isfinite(logits).all()


def test_naive_modules_explode_the_width():
    # Fig. 2a module: out = 1x1 + 3x3 + 5x5 + input channels, so the width accumulates:
    # 192 -> 416 -> 832 -> 1280 -> 1728 -> 2176 -> 2640 -> 3344 -> 4048 -> 4944.
    widths = [192]
    for ch1, _, ch3, _, ch5, _ in TABLE:
        widths.append(widths[-1] + ch1 + ch3 + ch5)
    assert widths[-1] == 4944
    model = ij.create_model("googlenet", naive=True)
    # hand_count(naive=True) adds each module's convs on its (growing) input width; the fc reads 4944.
    expected = hand_count(naive=True)
    assert expected == 70_300_872
    assert n_params(model) == expected  # 10.6x the reduced network
    logits, out = run(model, images(1, 32))
    assert out["pre_logits"].shape == (1, 4944)
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()


def test_tf_padding_is_same_everywhere():
    x = images(1, 97)
    torch_model = ij.create_model("googlenet")
    tf_model = ij.create_model("googlenet", padding_mode="tf")
    variables = fake_variables(tf_model, 97)
    # Shapes: 'SAME' gives ceil(n / stride) at every pool; ceil_mode 3x3/2 gives ceil((n - 1) / 2).
    _, out_tf = jit_apply(tf_model, variables, x, return_endpoints=True)
    _, out_torch = jit_apply(torch_model, variables, x, return_endpoints=True)
    shapes = lambda out: [out[k].shape[1] for k in ("conv1", "conv3", "inception3b", "inception4e", "inception5b")]
    assert shapes(out_tf) == [49, 25, 13, 7, 4]
    assert shapes(out_torch) == [49, 24, 12, 6, 3]
    # Values: conv1 7x7/2 on 96 pads (2, 3) under 'SAME' (TF puts the odd pixel at the end), not (3, 3).
    x = x[:, :96, :96]
    _, out_tf = jit_apply(tf_model, variables, x, return_endpoints=True)
    kernel = variables["params"]["conv1"]["conv"]["kernel"]
    conv = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((2, 3), (2, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    expected = jax.nn.relu(conv / math.sqrt(1 + 1e-3))  # fresh BN: mean 0, var 1, gamma 1, beta 0
    np.testing.assert_allclose(out_tf["conv1"], expected, rtol=1e-4, atol=1e-4)


def test_minimum_input_size():
    model = ij.create_model("googlenet", aux_logits=True)
    assert ij.data_config("googlenet").min_input_size == 15
    logits, out = run(model, images(2, 15), train=True)
    assert logits.shape == (2, 1000) and len(out["aux_logits"]) == 2
    assert out["inception5b"].shape[1:3] == (1, 1)
    with pytest.raises(ValueError, match="minimum size 15"):
        profile.abstract_variables(model, 14)


def test_init_outputs_and_dropout():
    model = ij.create_model("googlenet", aux_logits=True, num_classes=10)
    x = images(2, 64)
    variables = jax.jit(model.init)(jax.random.key(0), x)  # the one real init (slow to compile on CPU)
    assert {"aux1", "aux2"} <= set(variables["params"])  # created by an eval-mode init
    logits, out = run(model, x, variables=variables)
    assert logits.shape == (2, 10) and out["pre_logits"].shape == (2, 1024)
    assert out["aux_logits"] == ()  # eval mode: no aux logits, as torchvision
    assert list(out)[:-2] == ["conv1", "conv2", "conv3", *gn.INCEPTION_BLOCKS]
    assert [out[k].shape[-1] for k in ("conv1", "conv3", "inception3b", "inception4e", "inception5b")] == [
        64,
        192,
        480,
        832,
        1024,
    ]
    a, out = run(model, x, train=True, variables=variables)
    assert [aux.shape for aux in out["aux_logits"]] == [(2, 10), (2, 10)]
    b, _ = jit_apply(model, variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})[0]
    assert not np.allclose(a, b)  # dropout is active in train mode
    assert set(jit_apply(model, variables, x)[1]) == {"pre_logits", "aux_logits"}  # endpoints on request only
    assert ij.create_model("googlenet").num_aux_heads == 0


def test_bad_options_fail_clearly():
    for bad in (dict(norm="group"), dict(padding_mode="same"), dict(branch3_kernel=4)):
        with pytest.raises(ValueError, match="googlenet"):
            profile.abstract_variables(ij.create_model("googlenet", **bad), 32)
