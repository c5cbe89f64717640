"""BN-Inception (TF-slim inception_v2): counts against REFERENCES.md §1, slim names, 'SAME' semantics, switches.

No PyTorch reference exists, so the architecture is pinned by the counted parameters and MACs
(REFERENCES.md §1: 11,188,288 with gamma and beta, 11,178,336 slim-style, 1.935 GMACs at 224), a hand
count from slim's layer table, and TF-semantics checks of the padding and pooling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import fake_variables, jit_apply

import inception_jax as ij
from inception_jax.models import bn_inception as bn
from inception_jax.models import profile

PARAMS = 11_188_288  # gamma and beta (timm style)
PARAMS_SLIM = 11_178_336  # beta only (slim's scale=False)


def n_params(model, size: int = 224) -> int:
    return profile.count_params(profile.abstract_variables(model, size)["params"])


def images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


# ---------------------------------------------------------------------------------------- counts


def test_param_counts_match_reference():
    assert n_params(ij.create_model("bn_inception")) == PARAMS
    slim_style = ij.create_model("bn_inception", bn_use_scale=False)
    assert n_params(slim_style) == PARAMS_SLIM
    leaves = {p[-1].key for p, _ in jax.tree_util.tree_leaves_with_path(profile.abstract_variables(slim_style, 64))}
    assert "scale" not in leaves  # no gamma anywhere, as in slim checkpoints


def test_macs_match_reference():
    model = ij.create_model("bn_inception")
    macs = profile.count_macs(model, profile.abstract_variables(model, 224), 224)
    assert round(macs / 1e9, 3) == 1.935


def hand_count(factorize: bool = True, num_classes: int = 1000) -> int:
    """Parameters from slim's layer table: conv weights + 2 BN parameters (gamma, beta) per channel."""
    conv = lambda k, cin, cout: k * k * cin * cout + 2 * cout
    five = lambda cin, cout, stride: (conv(3, cin, cout) + conv(3, cout, cout)) if factorize else conv(5, cin, cout)
    total = 7 * 7 * 1 * 24 + conv(1, 24, 64)  # depthwise (x8, no BN) + pointwise; then 1x1 64, 3x3 192
    total += conv(1, 64, 64) + conv(3, 64, 192)
    c = 192
    for name in bn._ORDER:
        if name in bn._REDUCTION_CFG:
            (r3, c3), (r5, c5) = bn._REDUCTION_CFG[name]
            total += conv(1, c, r3) + conv(3, r3, c3) + conv(1, c, r5) + five(r5, c5, 2)
            c = c3 + c5 + c  # the max-pool branch passes its input through
        else:
            c1, (r3, c3), (r5, c5), _, proj = bn.INCEPTION_BLOCKS[name]
            total += conv(1, c, c1) + conv(1, c, r3) + conv(3, r3, c3) + conv(1, c, r5) + five(r5, c5, 1)
            total += conv(1, c, proj)
            c = c1 + c3 + c5 + proj
    assert c == 1024
    return total + c * num_classes + num_classes


def test_hand_count_matches_reference():
    assert hand_count() == PARAMS


def test_unfactorized_5x5():
    # Each double-3x3 path (reduce r -> c -> c) becomes one 5x5 (r -> c): +25rc - 9rc - 9c^2 and one
    # conv's BN (2c) less. Over the ten modules' (r, c): (64,96) x3, (96,128) x2, (128,160), (160,192),
    # (192,256), (160,224), (192,224):
    # 3 * 15,168 + 2 * 48,896 + 96,960 + 159,360 + 196,096 + 121,408 + 236,096 = 953,216.
    pairs = [(64, 96)] * 3 + [(96, 128)] * 2 + [(128, 160), (160, 192), (192, 256), (160, 224), (192, 224)]
    assert sum(16 * r * c - 9 * c * c - 2 * c for r, c in pairs) == 953_216
    model = ij.create_model("bn_inception", factorize_5x5=False)
    assert n_params(model) == PARAMS + 953_216 == hand_count(factorize=False)
    params = profile.abstract_variables(model, 64)["params"]
    assert params["Mixed_3b"]["Branch_2"]["Conv2d_0b_5x5"]["conv"]["kernel"].shape == (5, 5, 64, 96)
    assert params["Mixed_4a"]["Branch_1"]["Conv2d_1a_5x5"]["conv"]["kernel"].shape == (5, 5, 64, 96)
    logits, _ = jit_apply(model, fake_variables(model), images(1, 64))
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()


# ------------------------------------------------------------------------------ names and layout


def test_slim_scope_names():
    params = profile.abstract_variables(ij.create_model("bn_inception"), 224)["params"]
    assert set(params) == {"Conv2d_1a_7x7", "Conv2d_2b_1x1", "Conv2d_2c_3x3", *bn._ORDER, "Logits"}
    assert params["Conv2d_1a_7x7"]["depthwise"]["kernel"].shape == (7, 7, 1, 24)
    assert params["Conv2d_1a_7x7"]["pointwise"]["conv"]["kernel"].shape == (1, 1, 24, 64)
    assert set(params["Mixed_3b"]) == {"Branch_0", "Branch_1", "Branch_2", "Branch_3"}
    assert set(params["Mixed_3b"]["Branch_2"]) == {"Conv2d_0a_1x1", "Conv2d_0b_3x3", "Conv2d_0c_3x3"}
    assert set(params["Mixed_3b"]["Branch_3"]) == {"Conv2d_0b_1x1"}
    assert set(params["Mixed_4a"]) == {"Branch_0", "Branch_1"}  # Branch_2 is a parameter-free max pool
    assert set(params["Mixed_4a"]["Branch_1"]) == {"Conv2d_0a_1x1", "Conv2d_0b_3x3", "Conv2d_1a_3x3"}
    assert params["Mixed_5c"]["Branch_2"]["Conv2d_0c_3x3"]["conv"]["kernel"].shape == (3, 3, 224, 224)
    assert params["Logits"]["Conv2d_1c_1x1"]["kernel"].shape == (1024, 1000)


def test_depthwise_kernel_keeps_slim_channel_order():
    """Our (7, 7, 1, 24) grouped kernel is slim's [7, 7, 3, 8] depthwise kernel reshaped: output
    channel i*8 + m filters input channel i with slim's filter (i, m) (REFERENCES.md §3.4)."""
    model = ij.create_model("bn_inception")
    variables = fake_variables(model, 32)
    x = images(1, 32)
    _, state = jit_apply(model, variables, x, capture_intermediates=True, mutable=["intermediates"])
    ours = state["intermediates"]["Conv2d_1a_7x7"]["depthwise"]["__call__"][0]
    slim_kernel = np.asarray(variables["params"]["Conv2d_1a_7x7"]["depthwise"]["kernel"]).reshape(7, 7, 3, 8)
    for i in range(3):
        for m in range(8):
            ref = jax.lax.conv_general_dilated(
                x[..., i : i + 1],
                slim_kernel[:, :, i : i + 1, m : m + 1],
                (2, 2),
                "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            np.testing.assert_allclose(ours[..., i * 8 + m], ref[..., 0], rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------- padding, pools


def test_same_padding_everywhere():
    model = ij.create_model("bn_inception")
    variables = fake_variables(model, 224)
    keys = ("Conv2d_1a_7x7", "Conv2d_2c_3x3", "Mixed_3c", "Mixed_4e", "Mixed_5c")
    _, out = jit_apply(model, variables, images(1, 224), return_endpoints=True)
    assert [out[k].shape[1:] for k in keys] == [
        (112, 112, 64),
        (56, 56, 192),
        (28, 28, 320),
        (14, 14, 576),
        (7, 7, 1024),
    ]
    # Odd sizes: 'SAME' gives ceil(n / 2) at every stride-2 op; "torch" mode (symmetric k // 2) too.
    torch_model = ij.create_model("bn_inception", padding_mode="torch")
    _, out_tf = jit_apply(model, variables, images(1, 97), return_endpoints=True)
    _, out_torch = jit_apply(torch_model, variables, images(1, 97), return_endpoints=True)
    assert [out_tf[k].shape[1] for k in keys] == [out_torch[k].shape[1] for k in keys] == [49, 25, 13, 7, 4]
    # Values: Mixed_4a's max-pool branch (its last 320 channels) on the 28x28 Mixed_3c map pads (0, 1),
    # TF style, not (1, 1).
    pool = lambda x, pad: jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), pad, pad, (0, 0))
    )
    mixed_4a = out["Mixed_4a"]
    np.testing.assert_array_equal(mixed_4a[..., -320:], pool(out["Mixed_3c"], (0, 1)))
    assert not np.array_equal(mixed_4a[..., -320:], pool(out["Mixed_3c"], (1, 1)))


@pytest.mark.parametrize("padding_mode", ["tf", "torch"])
def test_average_pool_excludes_padding(padding_mode):
    # slim's 'SAME' avg pool divides by the number of real pixels: a constant map stays constant
    # (counting the padding would give 4/9 in the corners).
    branch = bn.Branch(convs=(), conv=None, pool="avg", padding_mode=padding_mode)
    np.testing.assert_allclose(branch.apply({}, jnp.ones((1, 5, 5, 2))), 1.0, rtol=1e-6)


# --------------------------------------------------------------------------------- sizes, options


def test_minimum_input_size():
    # Measured: every op maps n -> ceil(n / stride), so even a 1x1 image runs (slim's docstring says
    # "any size greater 32x32", a comment about accuracy, not shapes). check_input enforces 1.
    assert ij.data_config("bn_inception").min_input_size == 1
    for mode in ("tf", "torch"):
        model = ij.create_model("bn_inception", padding_mode=mode)
        variables = fake_variables(model, 1)
        logits, out = jit_apply(model, variables, images(2, 1), return_endpoints=True)
        assert logits.shape == (2, 1000) and np.isfinite(logits).all()
        assert out["Mixed_5c"].shape == (2, 1, 1, 1024)
    with pytest.raises(ValueError, match="minimum size 1"):
        profile.abstract_variables(ij.create_model("bn_inception"), 0)


def test_outputs_train_mode_and_dropout():
    model = ij.create_model("bn_inception", num_classes=10)
    variables = fake_variables(model, 64)
    x = images(2, 64)
    logits, out = jit_apply(model, variables, x, return_endpoints=True)
    assert logits.shape == (2, 10) and out["pre_logits"].shape == (2, 1024) and out["aux_logits"] == ()
    assert list(out)[:-2] == ["Conv2d_1a_7x7", "Conv2d_2b_1x1", "Conv2d_2c_3x3", *bn._ORDER]
    run = lambda seed: jit_apply(
        model, variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(seed)}
    )
    (a, _), state = run(0)
    (b, _), _ = run(1)
    assert not np.allclose(a, b)  # dropout 0.2 is active in train mode
    assert set(state["batch_stats"]) == set(variables["batch_stats"])
    assert model.num_aux_heads == 0


def test_options():
    # aux_logits is part of the common interface; BN-Inception has no head to turn on.
    assert profile.num_aux_heads(ij.create_model("bn_inception", aux_logits=True), 64) == 0
    # width_multiplier is slim's depth_multiplier, including the stem's depthwise multiplier:
    # min(int(depth(64) / 3), 8) = 5 at 0.25 (16 // 3), so the depthwise kernel is (7, 7, 1, 15).
    thin = profile.abstract_variables(ij.create_model("bn_inception", width_multiplier=0.25), 64)["params"]
    assert thin["Conv2d_1a_7x7"]["depthwise"]["kernel"].shape == (7, 7, 1, 15)
    assert thin["Mixed_5c"]["Branch_0"]["Conv2d_0a_1x1"]["conv"]["kernel"].shape == (1, 1, 256, 88)
    with pytest.raises(ValueError, match="padding_mode"):
        profile.abstract_variables(ij.create_model("bn_inception", padding_mode="same"), 64)
