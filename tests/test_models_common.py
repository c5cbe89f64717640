"""Contract, registry, report and numerics tests that apply to every variant.

Per-family parity against timm/torchvision lives in the family test files; here every registered
model is held to the shared contract and to the reference parameter counts and GMACs (REFERENCES.md §1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inception_jax
from inception_jax.models import profile
from inception_jax.tools.zoo import main as report_main

ALL_MODELS = [
    "bn_inception",
    "fid_inception_v3",
    "googlenet",
    "inception_resnet_v1",
    "inception_resnet_v2",
    "inception_v2",
    "inception_v3",
    "inception_v4",
]

# (params without aux, params with aux, GMACs at the default size): REFERENCES.md §1.
# Aux totals for v4 / IR-v2 are REFERENCES.md §1's computed TF-slim-head numbers; bn_inception and
# IR-v1 have no aux head in any reference.
REFERENCE_COUNTS = {
    "googlenet": (6_624_904, 13_004_888, 1.498),
    "inception_v3": (23_834_568, 27_161_264, 5.713),
    "inception_v4": (42_679_816, 46_039_280, 12.254),
    "inception_resnet_v2": (55_843_464, 59_211_120, 13.156),
    "inception_resnet_v1": (22_756_328, None, 6.206),
    "bn_inception": (11_188_288, None, 1.935),
    # pytorch-fid's module has 23,850,960 parameters (tests/test_fid.py counts it) and no aux head; its
    # GMACs are inception_v3's plus the 8 extra classes of the 1008-way classifier.
    "fid_inception_v3": (23_850_960, None, 5.713),
}


def test_every_variant_is_registered():
    assert inception_jax.list_models() == ALL_MODELS


def test_unknown_model_name_suggests_the_closest():
    with pytest.raises(ValueError, match=r"Unknown model name 'inception_v33'.*Did you mean 'inception_v3'"):
        inception_jax.create_model("inception_v33")


def test_options_read_back_from_json_build_a_hashable_module():
    """config.json and weight files give tuples back as lists; a Flax module must hash (jit, clone)."""
    model = inception_jax.create_model("inception_v4", depths=[1, 2, 1], num_classes=3)
    assert model.depths == (1, 2, 1) and hash(model) is not None


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown option 'dropout'.*Did you mean 'dropout_rate'"):
        inception_jax.create_model("inception_v3", dropout=0.1)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_common_options_exist_everywhere(name):
    options = inception_jax.model_options(name)
    for field in (
        "num_classes",
        "in_channels",
        "dropout_rate",
        "aux_logits",
        "width_multiplier",
        "bn_momentum",
        "bn_epsilon",
        "padding_mode",
        "remat",
        "dtype",
        "param_dtype",
    ):
        assert field in options, f"{name} lacks option {field}"


def test_data_configs_follow_the_references():
    v3 = inception_jax.data_config("inception_v3")
    assert (v3.input_size, v3.min_input_size, v3.crop_pct, v3.interpolation) == (299, 75, 0.875, "bicubic")
    assert v3.mean == v3.std == (0.5, 0.5, 0.5)
    assert inception_jax.data_config("inception_resnet_v2").crop_pct == 0.8975  # timm's default cfg
    g = inception_jax.data_config("googlenet")
    assert (g.input_size, g.min_input_size) == (224, 15)


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_parameter_counts_and_gmacs_match_the_references(name):
    params, params_aux, gmacs = REFERENCE_COUNTS[name]
    size = inception_jax.data_config(name).input_size
    model = inception_jax.create_model(name)
    variables = profile.abstract_variables(model, size)
    assert profile.count_params(variables["params"]) == params
    macs = profile.count_macs(model, variables, size) / 1e9
    assert macs == pytest.approx(gmacs, rel=0.01)
    if params_aux is not None:
        with_aux = inception_jax.create_model(name, aux_logits=True)
        assert profile.count_params(profile.abstract_variables(with_aux, size)["params"]) == params_aux


def test_mac_counter_against_a_hand_computed_conv_and_dense():
    import flax.linen as nn

    class Tiny(nn.Module):
        in_channels: int = 3

        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(8, (3, 3), strides=(2, 2), padding="VALID")(x)  # 9x9x3 -> 4x4x8
            x = nn.Conv(8, (3, 3), feature_group_count=8, padding="SAME")(x)  # depthwise
            return nn.Dense(5)(x.reshape(x.shape[0], -1)), {}

    model = Tiny()
    variables = profile.abstract_variables(model, 9)
    # 4*4*8 outputs x 27 taps; depthwise 4*4*8 x 9; dense 128 x 5.
    assert profile.count_macs(model, variables, 9) == 16 * 8 * 27 + 16 * 8 * 9 + 128 * 5


def test_report_prints_every_variant_as_json(capsys):
    assert report_main(["--json", "--models", "googlenet", "inception_v3"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["googlenet", "inception_v3"]
    assert rows[0]["params"] == 6_624_904 and rows[0]["params_with_aux"] == 13_004_888
    assert rows[1]["gmacs"] == pytest.approx(5.713, rel=0.01)
    assert (rows[1]["input_size"], rows[1]["min_input_size"]) == (299, 75)


def test_report_rejects_unknown_models():
    with pytest.raises(ValueError, match="Did you mean 'googlenet'"):
        report_main(["--models", "googlenett"])


# --- The call contract, at small sizes so every variant runs quickly ------------------------------


def _small(name):
    """A quarter-width variant with aux heads, its abstract variables and an abstract batch.

    The contract is about shapes, types and structure, so these tests trace (`jax.eval_shape`) and
    never compile; the family tests compare values against the references.
    """
    size = max(inception_jax.data_config(name).min_input_size, 75)
    model = inception_jax.create_model(name, width_multiplier=0.25, num_classes=7, aux_logits=True)
    return model, profile.abstract_variables(model, size), jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)


AUX_HEADS = {
    "googlenet": 2,
    "fid_inception_v3": 1,
    "inception_v2": 1,
    "inception_v3": 1,
    "inception_v4": 1,
    "inception_resnet_v1": 1,
    "inception_resnet_v2": 1,
    "bn_inception": 0,
}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_call_contract(name):
    """Same return type in train and eval; named NHWC endpoints; num_classes=0 returns features."""
    model, variables, x = _small(name)
    order = []  # insertion order, seen while tracing (a pytree dict coming out of a transform is sorted)

    def forward(v, x):
        logits, out = model.apply(v, x, train=False, return_endpoints=True)
        order.extend(out)
        return logits, out

    logits, out = jax.eval_shape(forward, variables, x)
    assert logits.shape == (2, 7)
    assert out["aux_logits"] == ()
    assert out["pre_logits"].ndim == 2 and out["pre_logits"].shape[0] == 2

    stages = [k for k in order if k not in ("pre_logits", "aux_logits")]
    assert len(stages) >= 4, stages
    for k in stages:
        assert out[k].ndim == 4 and out[k].shape[0] == 2, k
    sides = [out[k].shape[1] for k in stages]
    assert sides == sorted(sides, reverse=True), f"spatial size grows along the network: {dict(zip(stages, sides))}"

    (t_logits, t_out), updates = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}),
        variables,
        x,
    )
    assert t_logits.shape == (2, 7)
    assert isinstance(t_out["aux_logits"], tuple) and len(t_out["aux_logits"]) == AUX_HEADS[name]
    for aux in t_out["aux_logits"]:
        assert aux.shape == (2, 7)
    assert set(t_out) == {"pre_logits", "aux_logits"}, "endpoints only when asked for"
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])

    headless = model.clone(num_classes=0)
    features, f_out = jax.eval_shape(lambda v, x: headless.apply(v, x), variables, x)  # the classifier goes unused
    assert features.shape == f_out["pre_logits"].shape == out["pre_logits"].shape


@pytest.mark.parametrize("name", ALL_MODELS)
def test_bad_inputs_get_clear_errors(name):
    model = inception_jax.create_model(name)
    min_size = inception_jax.data_config(name).min_input_size
    variables = profile.abstract_variables(model, max(min_size, 75))
    too_small = jnp.zeros((1, min_size - 1, min_size - 1, 3))
    with pytest.raises(ValueError, match=rf"minimum size {min_size}x{min_size}"):
        jax.eval_shape(lambda v, x: model.apply(v, x), variables, too_small)
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.zeros((3, 299, 299)))
    with pytest.raises(ValueError, match="channels"):
        jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.zeros((1, 3, 299, 299)))
    with pytest.raises(TypeError, match="floating-point"):
        jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.zeros((1, 299, 299, 3), jnp.uint8))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_minimum_size_runs(name):
    model = inception_jax.create_model(name, width_multiplier=0.25)
    size = inception_jax.data_config(name).min_input_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = profile.abstract_variables(model, size)
    logits, _ = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert logits.shape == (1, inception_jax.data_config(name).num_classes)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_width_multiplier_scales_parameters(name):
    """slim's depth_multiplier: conv channels scale, so conv weights shrink roughly quadratically."""
    size = inception_jax.data_config(name).input_size
    full = profile.count_params(
        profile.abstract_variables(inception_jax.create_model(name, num_classes=0), size)["params"]
    )
    half = profile.count_params(
        profile.abstract_variables(inception_jax.create_model(name, num_classes=0, width_multiplier=0.5), size)[
            "params"
        ]
    )
    assert 0.2 * full < half < 0.35 * full


# Default depths and the first block of each stage (v4: timm's `features_N`; IR: the `repeat` scopes).
DEPTH_STAGES = {
    "inception_v4": ((4, 7, 3), ("features_6", "features_11", "features_19")),
    "inception_resnet_v1": ((5, 10, 5), ("repeat_0", "repeat_1_0", "repeat_2_0")),
    "inception_resnet_v2": ((10, 20, 9), ("repeat_0", "repeat_1_0", "repeat_2_0")),
}


@pytest.mark.parametrize("name", sorted(DEPTH_STAGES))
def test_depths_add_or_drop_whole_blocks(name):
    """`depths` counts the repeated blocks of each stage: one more block adds exactly that block's
    parameters; the aux head stays on the 17x17 grid (its 768 conv spans 5x5 at 299) at any depth."""
    default, first_blocks = DEPTH_STAGES[name]
    assert inception_jax.model_options(name)["depths"] == default
    params = lambda **kw: profile.abstract_variables(inception_jax.create_model(name, **kw), 299)["params"]
    base = params()
    for stage, block in enumerate(first_blocks):
        deeper = tuple(d + (i == stage) for i, d in enumerate(default))
        assert profile.count_params(params(depths=deeper)) == profile.count_params(base) + profile.count_params(
            base[block]
        )
    shallow = params(depths=(1, 1, 1), aux_logits=True)
    assert shallow["AuxLogits"]["conv1"]["conv"]["kernel"].shape[:2] == (5, 5)
    with pytest.raises(ValueError, match=r"depths takes 3 whole numbers >= 1.*got \(1, 0, 1\)"):
        params(depths=(1, 0, 1))


# bf16 compute: the documented tolerance (docs/models.md, "Options"): logits within 5% of the fp32 logits' scale.
BF16_TOLERANCE = 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inception_v3"])
def test_bf16_forward_tracks_fp32(name):
    size = 107
    model32 = inception_jax.create_model(name, width_multiplier=0.5)
    model16 = inception_jax.create_model(name, width_multiplier=0.5, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    variables = jax.jit(model32.init)(jax.random.key(1), x)  # jitted: eager dispatch is far slower on CPU
    # Give BN realistic statistics: one train-mode pass on this batch.
    _, updates = jax.jit(
        lambda v, x: model32.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    )(variables, x)
    variables = {**variables, **updates}
    ref, _ = jax.jit(lambda v, x: model32.apply(v, x))(variables, x)
    low, out = jax.jit(lambda v, x: model16.apply(v, x))(variables, x)
    assert low.dtype == jnp.bfloat16
    scale = float(jnp.abs(ref).max())
    err = float(jnp.abs(low.astype(jnp.float32) - ref).max())
    assert scale > 0.1
    assert err <= BF16_TOLERANCE * scale, f"bf16 error {err:.3g} vs scale {scale:.3g}"


def test_avg_pool_padding_semantics_against_hand_computed_corner():
    """REFERENCES.md §3.2: on all-ones input a 3x3/1 p1 corner averages 4/9 counting pads, 1 excluding them."""
    from inception_jax.models import layers

    x = jnp.ones((1, 5, 5, 1))
    incl = layers.avg_pool(x, 3, 1, 1, count_include_pad=True)
    excl = layers.avg_pool(x, 3, 1, 1, count_include_pad=False)
    assert float(incl[0, 0, 0, 0]) == pytest.approx(4 / 9) and float(incl[0, 0, 1, 0]) == pytest.approx(6 / 9)
    assert float(excl[0, 0, 0, 0]) == pytest.approx(1.0) and float(incl[0, 2, 2, 0]) == pytest.approx(1.0)


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if n != "googlenet"])
def test_avg_pool_semantics_is_a_switch_on_every_padded_pool_family(name):
    """The switch reaches the model's padded pools: the traced computation changes (its effect on
    values is the hand-computed check above). GoogLeNet has no padded average pool."""
    model, variables, x = _small(name)
    default = inception_jax.model_options(name)["avg_pool_count_include_pad"]
    traced = lambda m: str(jax.make_jaxpr(lambda v, x: m.apply(v, x))(variables, x))
    flipped = traced(model.clone(avg_pool_count_include_pad=not default))
    if name == "inception_resnet_v1":  # no padded average pool anywhere (paper Figs. 14-19)
        assert traced(model) == flipped
    else:
        assert traced(model) != flipped


# Inception blocks per variant at width 0.125 and depths (1, 1, 1) where the family has depths: what
# `remat=True` must checkpoint (REFERENCES.md §1's block lists; v3: 3 x A, B, 4 x C, D, 2 x E).
REMAT_BLOCKS = {
    "googlenet": 9,
    "bn_inception": 10,
    "inception_v2": 11,
    "inception_v3": 11,
    "fid_inception_v3": 11,
    "inception_v4": 8,
    "inception_resnet_v2": 7,
    "inception_resnet_v1": 5,
}


def _count_remat(jaxpr) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name in ("checkpoint", "remat2")  # jax.checkpoint's primitive (JAX 0.10: remat2)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    n += _count_remat(inner)
    return n


def _remat_model(name, remat):
    depths = {"depths": (1, 1, 1)} if "depths" in inception_jax.model_options(name) else {}
    model = inception_jax.create_model(name, width_multiplier=0.125, remat=remat, dropout_rate=0.0, **depths)
    size = max(inception_jax.data_config(name).min_input_size, 32)
    return model, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)


def _train_loss(model):
    def loss(variables, x):
        (logits, _), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return jnp.sum(logits**2)

    return loss


@pytest.mark.parametrize("name", ALL_MODELS)
def test_remat_checkpoints_every_block(name):
    """`remat=True` wraps each Inception block in jax.checkpoint and changes no parameter."""
    counts = []
    for remat in (False, True):
        model, x = _remat_model(name, remat)
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        counts.append(
            (
                _count_remat(jax.make_jaxpr(_train_loss(model))(variables, x).jaxpr),
                jax.tree.map(lambda a: a.shape, variables),
            )
        )
    assert counts[0][0] == 0 and counts[1][0] == REMAT_BLOCKS[name]
    assert counts[0][1] == counts[1][1]


@pytest.mark.parametrize("name", ["inception_resnet_v2"])  # the wiring of every variant is checked above
def test_remat_computes_the_same_loss_and_gradients(name):
    plain, x_spec = _remat_model(name, False)
    remat, _ = _remat_model(name, True)
    x = jax.random.normal(jax.random.key(1), x_spec.shape)
    variables = plain.init(jax.random.key(0), x)
    want = jax.jit(jax.value_and_grad(_train_loss(plain)))(variables, x)
    got = jax.jit(jax.value_and_grad(_train_loss(remat)))(variables, x)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * float(np.abs(a).max() + 1))
