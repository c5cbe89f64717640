"""Inception-v3 / -v2 pinned to timm and torchvision (calibrated random references, REFERENCES.md §7), to the
reference parameter counts, and to hand-computed parameter deltas for each of the paper's design switches.

Cost control (2 shared cores): one calibrated timm model per module, batch 2, one jit per (options, shape,
mode), and variables for the switch runs filled from `eval_shape` with numpy instead of a jitted `init`
(which took 40-50 s to compile here on a loaded machine).
"""

from __future__ import annotations

import copy
import functools
import math
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import assert_logits_close, calibrate_batchnorm, nchw, torch, torch_state_dict

import inception_jax
from inception_jax.models import inception_v3 as v3_module
from inception_jax.models import layers, profile, registry
from inception_jax.tools.convert import from_torch

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
F = torch.nn.functional

V3_PARAMS = 23_834_568  # timm inception_v3 (REFERENCES.md §1)
V3_PARAMS_AUX = 27_161_264  # torchvision inception_v3 with AuxLogits (REFERENCES.md §1)


def images(size: int, seed: int = 0, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


@functools.cache
def jitted_apply(name: str, train: bool = False, **options):
    """One jitted forward per model configuration (eval: with endpoints); one executable per input shape."""
    model = registry.create_model(name, **options)
    if train:
        return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    return jax.jit(lambda v, x: model.apply(v, x, train=False, return_endpoints=True))


def param_count(name: str, **options) -> int:
    model = registry.create_model(name, **options)
    return profile.count_params(profile.abstract_variables(model, 299)["params"])


def random_variables(name: str, size: int = 75, seed: int = 0, **options):
    """He-scaled random kernels, unit BN: a usable variable tree without compiling `init`."""
    model = registry.create_model(name, **options)
    shapes = profile.abstract_variables(model, size)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        kind = path[-1].key
        if kind == "kernel":
            std = math.sqrt(2.0 / math.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) * std).astype(np.float32)
        if kind in ("scale", "var"):
            return np.ones(leaf.shape, np.float32)
        if kind == "bias":
            return (rng.standard_normal(leaf.shape) * 0.05).astype(np.float32)
        return np.zeros(leaf.shape, np.float32)  # BN running means

    return jax.tree_util.tree_map_with_path(fill, shapes)


# ----------------------------------------------------------------------------------------------
# References (module-scoped: building and calibrating them is the expensive part)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_model():
    torch.manual_seed(0)
    model = timm.create_model("inception_v3", aux_logits=True)
    with torch.no_grad():  # timm's std-0.001 aux fc gives ~0.01 aux logits; widen it so mistakes show
        model.AuxLogits.fc.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
    return calibrate_batchnorm(model, 299, passes=2, batch=2)


@pytest.fixture(scope="module")
def timm_variables(timm_model):
    return from_torch("inception_v3", torch_state_dict(timm_model), aux_logits=True)


def timm_no_aux_forward(model, x):
    """timm's logits without running its aux head (which fails below 299)."""
    return model.forward_head(model.forward_postaux(model.forward_preaux(x)))


def torch_aux_adaptive(aux_module, x6e):
    """The reference aux head with its 5x5/3 pool replaced by adaptive pooling to 5x5 (our small-input rule)."""
    x = aux_module.conv1(aux_module.conv0(F.adaptive_avg_pool2d(x6e, 5)))
    return aux_module.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------


def test_param_counts_match_timm_and_torchvision():
    assert param_count("inception_v3") == V3_PARAMS
    assert param_count("inception_v3", aux_logits=True) == V3_PARAMS_AUX


def test_timm_parity_eval_299(timm_model, timm_variables):
    x = images(299)
    logits, out = jitted_apply("inception_v3", aux_logits=True)(timm_variables, x)
    with torch.no_grad():
        ref_logits, _ = timm_model(nchw(x))  # timm returns (logits, aux) even in eval; we do not
    assert_logits_close(logits, ref_logits.numpy())
    assert out["aux_logits"] == ()
    # Endpoints at 299, in network order; timm's feature_info taps and the pre-logits.
    assert list(out)[:3] == ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"]
    assert out["Conv2d_2b_3x3"].shape == (2, 147, 147, 64)
    assert out["Conv2d_4a_3x3"].shape == (2, 71, 71, 192)
    assert out["Mixed_5d"].shape == (2, 35, 35, 288)
    assert out["Mixed_6e"].shape == (2, 17, 17, 768)
    assert out["Mixed_7c"].shape == (2, 8, 8, 2048)
    assert out["pre_logits"].shape == (2, 2048)


def test_timm_parity_eval_75_minimum_size(timm_model, timm_variables):
    x = images(75, seed=1)
    logits, out = jitted_apply("inception_v3", aux_logits=True)(timm_variables, x)
    with torch.no_grad():
        ref_logits = timm_no_aux_forward(timm_model, nchw(x))
    assert out["Mixed_6e"].shape == (2, 3, 3, 768) and out["Mixed_7c"].shape == (2, 1, 1, 2048)
    assert_logits_close(logits, ref_logits.numpy())


@pytest.mark.parametrize("side", [17, 3], ids=["17x17-reference-pool", "3x3-adaptive-pool"])
def test_aux_head_eval_matches_timm(timm_model, timm_variables, side):
    """The head alone on a Mixed_6e-shaped input, BN on running statistics. At 17x17 (input 299) it is
    timm's AuxLogits; at 3x3 (input 75, where timm fails) it is timm's with the pool made adaptive."""
    x6e = np.abs(np.random.default_rng(side).standard_normal((2, side, side, 768))).astype(np.float32)
    head = v3_module.InceptionAux(1000, functools.partial(layers.ConvBN))
    variables = {c: timm_variables[c]["AuxLogits"] for c in ("params", "batch_stats")}
    ours = jax.jit(lambda v, x: head.apply(v, x))(variables, x6e)
    with torch.no_grad():
        aux = timm_model.AuxLogits
        ref = aux(nchw(x6e)) if side >= 17 else torch_aux_adaptive(aux, nchw(x6e))
    assert_logits_close(ours, ref.numpy())


def test_below_minimum_size_raises_naming_75():
    model = inception_jax.create_model("inception_v3")
    with pytest.raises(ValueError, match="inception_v3: input 74x74 is below the minimum size 75x75"):
        profile.abstract_variables(model, 74)
    with pytest.raises(ValueError, match="inception_v2: .*minimum size 75x75"):
        inception_jax.create_model("inception_v2").init(jax.random.key(0), jnp.zeros((1, 74, 80, 3)))


def test_torchvision_parity_eval_299(timm_model):
    tv = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True, transform_input=False)
    # Same parameter names as timm: give torchvision the calibrated weights instead of calibrating again.
    tv.load_state_dict(timm_model.state_dict(), strict=True)
    tv.eval()
    variables = from_torch("inception_v3", torch_state_dict(tv), aux_logits=True)
    x = images(299, seed=2)
    logits, _ = jitted_apply("inception_v3", aux_logits=True)(variables, x)
    with torch.no_grad():
        ref = tv(nchw(x))  # torchvision returns only the logits in eval
    assert_logits_close(logits, ref.numpy())


@pytest.mark.parametrize("kernels", ["auto", "xla"])
def test_aux_head_train_mode_matches_timm(timm_model, timm_variables, kernels):
    """Train mode, BN on batch statistics on both sides, dropout off (timm's default drop_rate is 0), with
    the CPU forms ("auto" on this CPU) and with XLA's operations."""
    ref_model = copy.deepcopy(timm_model).train()
    x = images(299, seed=3)
    (logits, out), new_vars = jitted_apply(
        "inception_v3", train=True, aux_logits=True, dropout_rate=0.0, kernels=kernels
    )(timm_variables, x)
    with torch.no_grad():
        ref_logits, ref_aux = ref_model(nchw(x))
    assert_logits_close(logits, ref_logits.numpy())
    # BN over 2 samples of conv1's 1x1 map divides by sqrt(var + 1e-3) with var down to ~1e-5 for some
    # channels, amplifying fp32 rounding up to 1/sqrt(1e-3) ~ 32x: measured 3e-4 to 6e-4 relative. A wrong
    # weight, running instead of batch statistics, or PyTorch's unbiased variance would be off by O(1).
    assert_logits_close(out["aux_logits"][0], ref_aux.numpy(), rel=1e-3)
    old = timm_variables["batch_stats"]["AuxLogits"]["conv1"]["bn"]["mean"]
    assert not np.allclose(new_vars["batch_stats"]["AuxLogits"]["conv1"]["bn"]["mean"], old)


def test_avg_pool_exclude_pad_matches_tf_semantics(timm_model, timm_variables, monkeypatch):
    """`avg_pool_count_include_pad=False` == timm with every block avg pool excluding the padding (TF 'SAME')."""
    tf_functional = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    tf_functional.avg_pool2d = functools.partial(F.avg_pool2d, count_include_pad=False)
    # `timm.models.inception_v3` is the entry-point function; the module is only reachable via sys.modules.
    monkeypatch.setattr(sys.modules["timm.models.inception_v3"], "F", tf_functional)
    x = images(75, seed=4)
    logits, _ = jitted_apply("inception_v3", aux_logits=True, avg_pool_count_include_pad=False)(timm_variables, x)
    with torch.no_grad():
        ref_logits = timm_no_aux_forward(timm_model, nchw(x))
    assert_logits_close(logits, ref_logits.numpy())
    default_logits, _ = jitted_apply("inception_v3", aux_logits=True)(timm_variables, x)
    assert np.abs(np.asarray(default_logits) - np.asarray(logits)).max() > 1e-3  # the switch matters


# ----------------------------------------------------------------------------------------------
# Design switches: parameter deltas worked out by hand, and each switched model runs
# ----------------------------------------------------------------------------------------------

# Conv-BN units count k_h*k_w*c_in*c_out kernel weights + 2*c_out BN (scale, bias); a biased conv without
# BN counts k_h*k_w*c_in*c_out + c_out.
#
# factorize_7x7=False: Conv2d_1a_3x3 (3*3*3*32 + 64 = 928) + Conv2d_2a_3x3 (3*3*32*32 + 64 = 9,280)
#   + Conv2d_2b_3x3 (3*3*32*64 + 128 = 18,560) = 28,768 become Conv2d_1a_7x7 (7*7*3*64 + 128 = 9,536):
#   9,536 - 28,768 = -19,232.
# bn_aux=False: AuxLogits.conv1 (5*5*128*768 kernel) loses BN (2*768) and gains a bias (768): -768.
# factorize_nxn=False, per Mixed_6b-6e block with c = channels_7x7:
#   branch7x7:    1x7 (7c^2 + 2c) + 7x1 (7*192c + 384)  ->  7x7 (49*192c + 384):  42*192c - 7c^2 - 2c
#   branch7x7dbl: 7x1 + 1x7 (14c^2 + 4c)                ->  7x7 (49c^2 + 2c):      35c^2 - 2c
#                 7x1 (7c^2 + 2c) + 1x7 (7*192c + 384)  ->  7x7 (49*192c + 384):  42*192c - 7c^2 - 2c
#   sum: 84*192c + 21c^2 - 6c = 16,122c + 21c^2
#   c=128: 2,063,616 + 344,064 = 2,407,680;  c=160 (x2): 2,579,520 + 537,600 = 3,117,120 each;
#   c=192: 3,095,424 + 774,144 = 3,869,568.   Total 2,407,680 + 2*3,117,120 + 3,869,568 = +12,511,488.
# inception_a_5x5="3x3": branch5x5_2 5*5*48*64 = 76,800 -> 3*3*48*64 = 27,648 (BN unchanged):
#   -49,152 per block, x3 (Mixed_5b-5d) = -147,456.
# inception_a_5x5="3x3x2": 76,800 -> 27,648 + (3*3*64*64 + 128 = 36,992) = 64,640: -12,160 x3 = -36,480.
# avg_pool_count_include_pad=False: parameter-free, 0.
SWITCH_DELTAS = [
    (dict(factorize_7x7=False), False, -19_232),
    (dict(bn_aux=False), True, -768),
    (dict(factorize_nxn=False), False, 12_511_488),
    (dict(inception_a_5x5="3x3"), False, -147_456),
    (dict(inception_a_5x5="3x3x2"), False, -36_480),
    (dict(avg_pool_count_include_pad=False), False, 0),
]


@pytest.mark.parametrize("switch, aux, delta", SWITCH_DELTAS, ids=lambda v: str(v))
def test_switch_changes_param_count_by_hand_computed_amount(switch, aux, delta):
    base = V3_PARAMS_AUX if aux else V3_PARAMS
    assert param_count("inception_v3", aux_logits=aux, **switch) - base == delta


def test_switch_structure():
    def params(**options):
        return profile.abstract_variables(registry.create_model("inception_v3", **options), 75)["params"]

    p = params(factorize_7x7=False)
    assert "Conv2d_1a_3x3" not in p and "Conv2d_2b_3x3" not in p
    assert p["Conv2d_1a_7x7"]["conv"]["kernel"].shape == (7, 7, 3, 64)

    aux = params(aux_logits=True, bn_aux=False)["AuxLogits"]
    assert set(aux["conv1"]) == {"conv"} and aux["conv1"]["conv"]["bias"].shape == (768,)
    assert set(aux["conv0"]) == {"conv", "bn"}  # "not just the convolutions": conv0 keeps BN

    c = params(factorize_nxn=False)["Mixed_6b"]
    assert c["branch7x7_2"]["conv"]["kernel"].shape == (7, 7, 128, 192) and "branch7x7_3" not in c
    assert c["branch7x7dbl_3"]["conv"]["kernel"].shape == (7, 7, 128, 192) and "branch7x7dbl_4" not in c
    assert params(factorize_nxn=False)["Mixed_7a"]["branch7x7x3_2"]["conv"]["kernel"].shape == (1, 7, 192, 192)

    a = params(inception_a_5x5="3x3x2")["Mixed_5c"]
    assert a["branch5x5_2"]["conv"]["kernel"].shape == (3, 3, 48, 64)
    assert a["branch5x5_3"]["conv"]["kernel"].shape == (3, 3, 64, 64)
    with pytest.raises(ValueError, match="inception_a_5x5 must be"):
        params(inception_a_5x5="7x7")


@pytest.mark.parametrize(
    "switch",
    [dict(factorize_nxn=False, inception_a_5x5="3x3"), dict(inception_a_5x5="3x3x2")],
    ids=lambda v: str(v),
)
def test_switched_models_run(switch):
    """Each switch runs (factorize_7x7, bn_aux: via inception_v2; count_include_pad: the TF-semantics test)."""
    x = images(75, seed=5)
    variables = random_variables("inception_v3", **switch)
    logits, out = jitted_apply("inception_v3", **switch)(variables, x)
    assert logits.shape == (2, 1000) and np.isfinite(np.asarray(logits)).all()
    assert out["Mixed_7c"].shape == (2, 1, 1, 2048)
    assert float(np.std(np.asarray(logits))) > 1e-3


# ----------------------------------------------------------------------------------------------
# Inception-v2
# ----------------------------------------------------------------------------------------------


def test_inception_v2_is_v3_before_factorized_7x7_and_bn_auxiliary():
    options = registry.model_options("inception_v2")
    assert options["factorize_7x7"] is False and options["bn_aux"] is False
    assert {k: v for k, v in options.items() if k not in ("factorize_7x7", "bn_aux")} == {
        k: v for k, v in registry.model_options("inception_v3").items() if k not in ("factorize_7x7", "bn_aux")
    }
    assert registry.data_config("inception_v2") == registry.data_config("inception_v3")
    assert {"inception_v2", "inception_v3"} <= set(inception_jax.list_models())
    # By hand: v3 - 19,232 (7x7 stem, see above) = 23,815,336; with aux also - 768 (conv1 BN) = 27,141,264.
    assert param_count("inception_v2") == 23_815_336
    assert param_count("inception_v2", aux_logits=True) == 27_141_264


def test_inception_v2_runs_at_299():
    """Train mode at 299, so the aux head (conv1 without BN) runs too; endpoints come from eval mode."""
    x = images(299, seed=6)
    variables = random_variables("inception_v2", size=299, aux_logits=True)
    (logits, out), _ = jitted_apply("inception_v2", train=True, aux_logits=True, dropout_rate=0.0)(variables, x)
    assert logits.shape == (2, 1000) and np.isfinite(np.asarray(logits)).all()
    assert len(out["aux_logits"]) == 1 and out["aux_logits"][0].shape == (2, 1000)
    assert np.isfinite(np.asarray(out["aux_logits"][0])).all()
    # The 7x7/2 VALID stem lands on the same grid as the three 3x3 convs it replaces: 299 -> 147.
    model = registry.create_model("inception_v2", aux_logits=True)
    shapes = jax.eval_shape(lambda v, x: model.apply(v, x, return_endpoints=True)[1], variables, x)
    assert shapes["Conv2d_1a_7x7"].shape == (2, 147, 147, 64) and "Conv2d_1a_3x3" not in shapes
    assert shapes["Mixed_5b"].shape == (2, 35, 35, 256) and shapes["Mixed_7c"].shape == (2, 8, 8, 2048)


def test_adaptive_pool_matches_torch_and_aux_only_in_train_mode():
    # The adaptive pool used below 299 against torch's, on awkward sizes (7 -> 5 and 9 -> 5, overlapping bins).
    x = np.random.default_rng(7).standard_normal((2, 7, 9, 3)).astype(np.float32)
    ours = layers.adaptive_avg_pool(jnp.asarray(x), 5)
    ref = F.adaptive_avg_pool2d(nchw(x), 5).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)

    spec = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
    model = inception_jax.create_model("inception_v3", aux_logits=True)
    variables = profile.abstract_variables(model, 75)  # init in eval mode still creates the head
    assert "AuxLogits" in variables["params"] and model.num_aux_heads == 1
    assert jax.eval_shape(lambda v, x: model.apply(v, x)[1]["aux_logits"], variables, spec) == ()
    assert not inception_jax.create_model("inception_v3").num_aux_heads
    assert not inception_jax.create_model("inception_v3", aux_logits=True, num_classes=0).num_aux_heads
