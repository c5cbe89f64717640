"""Scanned stages (`scan_blocks=True`) compute what the unrolled blocks compute, and weights move
between the two layouts wherever weights are read: converters, weight files, init_from, checkpoints."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inception_jax
from inception_jax.models import profile, registry, stacking
from inception_jax.tools.convert import load_variables, save_variables
from inception_jax.trainer import finetune, validation
from inception_jax.trainer.config import base_config

SCANNED = ["inception_v4", "inception_resnet_v2", "inception_resnet_v1"]


def _tiny(name, **options):
    aux = {"aux_logits": True} if name != "inception_resnet_v1" else {}
    return registry.create_model(
        name, width_multiplier=0.25, depths=(2, 3, 2), num_classes=7, dropout_rate=0.0, **aux, **options
    )


def test_stacked_names_and_groups():
    assert stacking.stacked_name(["repeat_1_0", "repeat_1_1", "repeat_1_19"]) == "repeat_1_0-19"
    v4 = _tiny("inception_v4")
    assert v4.block_groups() == [
        ["features_6", "features_7"],
        ["features_9", "features_10", "features_11"],
        ["features_13", "features_14"],
    ]
    assert _tiny("inception_resnet_v2").block_groups()[1] == ["repeat_1_0", "repeat_1_1", "repeat_1_2"]


def _random_variables(model, size, seed=0):
    """Every leaf random (He-scaled kernels, BatchNorm statistics and affine terms away from identity), in
    the model's parameter dtype, without compiling `init`."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[-3:-1] if len(shape) > 2 else shape[:1]))
        elif name in ("scale", "var"):
            value = 1.0 + 0.2 * np.abs(rng.standard_normal(shape))
        else:
            value = 0.1 * rng.standard_normal(shape)
        return value.astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, profile.abstract_variables(model, size))


def _assert_trees_close(ours, ref, rel):
    scale = max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(ref))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=rel * scale), ours, ref)


@pytest.mark.slow
@pytest.mark.parametrize("name", SCANNED)
def test_scanned_stages_compute_the_unrolled_function_in_float64(name):
    """Train mode with the same weights: logits, aux logits and updated BatchNorm statistics equal to
    rounding (float64: a random network this deep amplifies float32 rounding), and the stacked layout is
    exactly what the scanned model initialises. IR-v1 also compares every gradient."""
    unrolled = _tiny(name, dtype=jnp.float64, param_dtype=jnp.float64)
    scanned = unrolled.clone(scan_blocks=True)
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (4, 75, 75, 3), jnp.float64)
        variables = _random_variables(unrolled, 75)
        stacked = stacking.to_layout(variables, scanned)
        shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
        assert shapes(stacked) == shapes(jax.eval_shape(scanned.init, jax.random.key(1), x))
        jax.tree.map(np.testing.assert_array_equal, stacking.to_layout(stacked, unrolled), variables)

        def forward(model, variables):
            def loss(params):
                (logits, out), updated = model.apply(
                    {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
                )
                return jnp.sum(logits**2) + sum(jnp.sum(a**2) for a in out["aux_logits"]), (logits, out, updated)

            if name == "inception_resnet_v1":
                return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
            return jax.jit(loss)(variables["params"]), None

        (_, (logits_u, out_u, stats_u)), grads_u = forward(unrolled, variables)
        (_, (logits_s, out_s, stats_s)), grads_s = forward(scanned, stacked)
        _assert_trees_close((logits_s, out_s["aux_logits"]), (logits_u, out_u["aux_logits"]), 1e-10)
        _assert_trees_close(stacking.to_layout(stats_s, unrolled), stats_u, 1e-10)
        if grads_u is not None:
            _assert_trees_close(stacking.to_layout({"params": grads_s}, unrolled), {"params": grads_u}, 1e-10)


@pytest.mark.parametrize("name", SCANNED)
def test_counts_are_the_same_in_both_layouts(name):
    """Parameters, and multiply-accumulates with each scanned block counted once per repeat."""
    unrolled = registry.create_model(name)
    scanned = unrolled.clone(scan_blocks=True)
    for model in (unrolled, scanned):
        model_vars = profile.abstract_variables(model, 299)
        if model is unrolled:
            params, macs = profile.count_params(model_vars["params"]), profile.count_macs(model, model_vars, 299)
        else:
            assert profile.count_params(model_vars["params"]) == params
            assert profile.count_macs(model, model_vars, 299) == macs


def test_a_width_whose_blocks_change_the_channel_count_cannot_be_scanned():
    """TF-slim floors each branch's scaled width on its own, so at 0.125 Inception-v4's first B block
    gets 56 channels from Reduction-A and gives 64: a clear error instead of JAX's scan carry mismatch."""
    model = registry.create_model("inception_v4", width_multiplier=0.125, num_classes=7, scan_blocks=True)
    with pytest.raises(ValueError, match=r"scan_blocks=True: blocks features_.*width_multiplier.*scan_blocks=False"):
        profile.abstract_variables(model, 75)
    profile.abstract_variables(model.clone(scan_blocks=False), 75)


def test_weight_files_load_into_either_layout(tmp_path):
    model = _tiny("inception_resnet_v2")
    x = jnp.zeros((1, 75, 75, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    path = tmp_path / "irv2.msgpack"
    save_variables(
        path,
        variables,
        model="inception_resnet_v2",
        options=dict(width_multiplier=0.25, depths=(2, 3, 2), num_classes=7, aux_logits=True),
    )
    loaded_model, loaded = load_variables(path)
    assert not loaded_model.scan_blocks and "repeat_1_2" in loaded["params"]
    # A file written by a scanned model is read back stacked, and converts to the unrolled layout.
    scanned = model.clone(scan_blocks=True)
    save_variables(
        tmp_path / "scanned.msgpack",
        stacking.to_layout(variables, scanned),
        model="inception_resnet_v2",
        options=dict(width_multiplier=0.25, depths=(2, 3, 2), num_classes=7, aux_logits=True, scan_blocks=True),
    )
    scanned_model, stacked = load_variables(tmp_path / "scanned.msgpack")
    assert scanned_model.scan_blocks and stacked["params"]["repeat_1_0-2"]["block"]["conv2d"]["kernel"].shape[0] == 3
    jax.tree.map(np.testing.assert_array_equal, stacking.to_layout(stacked, model), jax.tree.map(np.asarray, variables))


def test_the_trainer_loads_init_from_weights_of_the_other_layout(tmp_path):
    from inception_jax import optim
    from inception_jax.trainer import parallel, train

    c = base_config()
    c.model.name = "inception_resnet_v1"
    c.model.width_multiplier, c.model.depths, c.model.scan_blocks = 0.25, (2, 3, 2), True
    c.input.image_size, c.batch_size, c.total_steps = 75, 8, 10
    c.init_from = str(tmp_path / "unrolled.msgpack")
    config = validation.validated(c)
    unrolled = registry.create_model("inception_resnet_v1", width_multiplier=0.25, depths=(2, 3, 2), num_classes=7)
    weights = jax.jit(unrolled.init)(jax.random.key(3), jnp.zeros((1, 75, 75, 3)))
    save_variables(
        c.init_from,
        weights,
        model="inception_resnet_v1",
        options=dict(width_multiplier=0.25, depths=(2, 3, 2), num_classes=7),
    )
    model = train.build_model(config, 7)
    tx, _ = optim.make_optimizer(config, 10, 10)
    state = jax.eval_shape(lambda k: train.init_state(model, tx, config, 75, k), jax.random.key(0))
    state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), state)
    mesh = parallel.make_mesh()
    state = train._load_init_from(config, model, state, parallel.replicated(mesh))
    jax.tree.map(
        np.testing.assert_array_equal,
        stacking.to_layout(jax.device_get({"params": state.params, "batch_stats": state.batch_stats}), unrolled),
        jax.tree.map(np.asarray, weights),
    )


def test_resuming_in_the_other_layout_and_fine_tuning_part_of_a_stage_are_refused(tmp_path):
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "10").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"model": {"name": "inception_v4", "scan_blocks": False}}))
    c = base_config()
    c.model.name = "inception_v4"
    c.model.scan_blocks = True
    with pytest.raises(
        validation.ConfigError,
        match="written with scan_blocks=False; resume with "
        r"--config.model.scan_blocks=False, or .*init_from",
    ):
        validation.check_resume(c, os.fspath(workdir))
    c.model.scan_blocks = False
    validation.check_resume(c, os.fspath(workdir))
    c.trainable = "last:2"
    with pytest.raises(ValueError, match="scan_blocks=True each stage's blocks are one module; fine-tune with"):
        finetune.make_plan(c, inception_jax.create_model("inception_v4", scan_blocks=True), 299)
