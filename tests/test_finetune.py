"""Fine-tuning (inception_jax/trainer/finetune.py): frozen blocks and BatchNorm stay put, the backbone learning-rate
multiplier and weight decay act as hand-computed, and `configs/finetune_digits.py` starts from the file."""

from __future__ import annotations

import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inception_jax
from inception_jax import optim
from inception_jax.models import layers
from inception_jax.tools.convert import save_variables
from inception_jax.trainer import finetune, parallel, train, validation
from inception_jax.trainer.config import base_config

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")


class _Tiny(nn.Module):
    """stem (ConvBN) -> block (ConvBN) -> fc: two backbone blocks and a head, compiled in a second."""

    num_classes: int = 3
    in_channels: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = layers.ConvBN(4, 3, padding=1, name="stem")(x, train)
        x = layers.ConvBN(5, 3, padding=1, name="block")(x, train)
        return nn.Dense(self.num_classes, name="fc")(x.mean(axis=(1, 2))), {"aux_logits": ()}


def _config(**fields):
    c = base_config()
    c.model.name = "googlenet"  # only named in messages; _Tiny is passed directly
    c.optimizer.name = "sgd"
    c.optimizer.momentum = 0.0
    c.optimizer.weight_decay = 0.01
    c.schedule.name = "constant"
    c.schedule.base_learning_rate = 1.0
    for k, v in fields.items():
        c[k] = v
    return c


def _one_step(config, model=None, seed=0):
    """Runs one train step of `model` (default `_Tiny()`) under `config`'s plan on 8 devices; returns
    (before, after, metrics)."""
    model = model or _Tiny()
    mesh = parallel.make_mesh()
    plan = finetune.make_plan(config, model, 6)
    tx, schedule = optim.make_optimizer(config, 10, 10)
    tx = plan.wrap(tx)
    state = train.init_state(model, tx, config, 6, jax.random.key(seed))
    # Non-trivial running statistics, so "unchanged" and "used" are visible.
    state = state.replace(batch_stats=jax.tree.map(lambda v: v + 0.3, state.batch_stats))
    before = jax.device_get(state)
    step = train.make_train_step(model, tx, schedule, config, 3, mesh, plan)
    rng = np.random.default_rng(seed)
    batch = {"image": rng.normal(size=(8, 6, 6, 3)).astype(np.float32), "label": rng.integers(0, 3, 8).astype(np.int32)}
    after, metrics = step(
        jax.device_put(state, parallel.replicated(mesh)), parallel.global_batch(batch, mesh), jax.random.key(1)
    )
    return before, jax.device_get(after), jax.device_get(metrics), batch, plan


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_frozen_blocks_and_their_statistics_do_not_move_and_the_rest_updates_as_hand_computed():
    config = _config(trainable="last:1", backbone_lr_multiplier=0.5)
    before, after, metrics, batch, plan = _one_step(config)
    assert plan.frozen == {"stem"}
    assert _equal(before.params["stem"], after.params["stem"])
    assert _equal(before.batch_stats["stem"], after.batch_stats["stem"])
    assert not _equal(before.batch_stats["block"], after.batch_stats["block"])  # trainable: batch statistics
    assert after.opt_state is not None and len(jax.tree.leaves(after.opt_state)) == len(
        jax.tree.leaves(before.opt_state)
    )

    # Hand-computed SGD (lr 1, no momentum) with L2 decay 0.01 on kernels: w - m * (g + 0.01 * w * is_kernel),
    # m = 1 for the head and 0.5 for the backbone; g from the loss with the stem's BN on running statistics.
    def loss(params):
        return train._forward_loss(_Tiny(), config, 3, plan, params, before.batch_stats, batch, jax.random.key(1))[0]

    grads = jax.device_get(jax.grad(loss)(before.params))
    for block, m in (("block", 0.5), ("fc", 1.0)):
        for path, w in jax.tree_util.tree_leaves_with_path(before.params[block]):
            g = _at(grads[block], path)
            decay = 0.01 * w if path[-1].key == "kernel" else 0.0
            np.testing.assert_allclose(_at(after.params[block], path), w - m * (g + decay), rtol=1e-5, atol=1e-6)
    trainable = {k: v for k, v in grads.items() if k != "stem"}
    np.testing.assert_allclose(
        metrics["train/grad_norm"], np.sqrt(sum(np.sum(g**2) for g in jax.tree.leaves(trainable))), rtol=1e-5
    )


def _at(tree, path):
    for p in path:
        tree = tree[p.key]
    return tree


def test_freeze_bn_normalises_with_the_running_statistics_in_train_mode():
    config = _config(freeze_bn=True, trainable="all")
    before, after, _, batch, plan = _one_step(config)
    assert _equal(before.batch_stats, after.batch_stats)
    assert not _equal(before.params["stem"], after.params["stem"])  # BN scale/bias and the kernels still train
    variables = {"params": before.params, "batch_stats": before.batch_stats}
    with plan.batchnorm_context():
        frozen_train, _ = _Tiny().apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    eval_logits, _ = _Tiny().apply(variables, batch["image"], train=False)
    np.testing.assert_allclose(frozen_train[0], eval_logits, rtol=1e-6, atol=1e-6)
    free_train, _ = _Tiny().apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    assert np.abs(free_train[0] - eval_logits).max() > 1e-3  # without the plan, batch statistics
    tx = optim.make_optimizer(config, 10, 10)[0]
    assert plan.wrap(tx) is tx  # freeze_bn alone changes no update: the optimizer state keeps its shape


def test_head_only_freezes_every_block():
    before, after, _, _, plan = _one_step(_config(trainable="head"))
    assert plan.frozen == {"stem", "block"}
    assert _equal(before.params["block"], after.params["block"]) and _equal(before.batch_stats, after.batch_stats)
    assert not _equal(before.params["fc"], after.params["fc"])


@pytest.mark.parametrize(
    "name,overrides,last",
    [
        ("inception_v3", {}, ["Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]),
        ("inception_resnet_v2", {"depths": (1, 1, 1)}, ["mixed_7a", "repeat_2_0", "block8", "conv2d_7b"]),
        ("googlenet", {"aux_logits": True}, ["inception4e", "inception5a", "inception5b"]),
        ("bn_inception", {}, ["Mixed_4e", "Mixed_5a", "Mixed_5b", "Mixed_5c"]),
    ],
)
def test_blocks_are_listed_in_network_order_without_the_head(name, overrides, last):
    model = inception_jax.create_model(name, width_multiplier=0.25, **overrides)
    size = inception_jax.data_config(name).min_input_size
    blocks = finetune.blocks_in_order(model, max(size, 32))
    assert blocks[-len(last) :] == last
    assert not any(finetune.is_head(b) for b in blocks) and "Dropout_0" not in blocks
    if name == "inception_v3":
        assert blocks[:2] == ["Conv2d_1a_3x3", "Conv2d_2a_3x3"] and len(blocks) == 16


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"trainable": "last:0"}, r"config.trainable='last:0': 'last:K' takes a whole number K >= 1"),
        ({"trainable": " , "}, r"config.trainable=' , ': use 'all', 'head', 'last:K' or comma-separated block names"),
        ({"backbone_lr_multiplier": 0.0}, r"config.backbone_lr_multiplier=0.0 must be > 0 .*config.trainable='head'"),
    ],
)
def test_bad_fine_tuning_fields_are_refused_before_anything_runs(fields, message):
    c = _config(**fields)
    c.total_steps = 1
    with pytest.raises(validation.ConfigError, match=message):
        validation.validated(c)


def test_unknown_or_too_many_blocks_name_the_valid_ones():
    model = inception_jax.create_model("inception_v3", width_multiplier=0.25)
    c = _config(trainable="Mixed_7x")
    c.model.name = "inception_v3"
    with pytest.raises(ValueError, match=r"'Mixed_7x', which is not a block of inception_v3. Did you mean 'Mixed_7c'"):
        finetune.make_plan(c, model, 75)
    c.trainable = "last:17"
    with pytest.raises(ValueError, match=r"inception_v3 has only 16 blocks before its head \(Conv2d_1a_3x3, "):
        finetune.make_plan(c, model, 75)
    c.trainable = "Mixed_7b,Mixed_7c"
    assert len(finetune.make_plan(c, model, 75).frozen) == 14


def _load_config(name, arg):
    spec = importlib.util.spec_from_file_location(f"configs_{name}", os.path.join(CONFIG_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_finetune_config_needs_a_weight_file():
    with pytest.raises(ValueError, match=r"needs a weight file: --config=configs/finetune_digits.py:init_from=FILE"):
        _load_config("finetune_digits", None)


@pytest.mark.slow
def test_finetune_config_starts_from_the_file_and_keeps_the_frozen_parts(tmp_path):
    """A "converted" 1000-class GoogLeNet (random weights, shifted BN statistics) fine-tuned on digits for
    two steps with the last block trainable: every frozen leaf is the file's, bit for bit, the trainable
    block moved while its BatchNorm statistics (freeze_bn) did not, and the head was re-made for 10 classes."""
    options = {"width_multiplier": 0.125, "aux_logits": False}
    model = inception_jax.create_model("googlenet", **options)
    variables = model.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)))
    # Statistics unlike a fresh init's (mean 0, var 1) but mild enough to keep the random net's units alive.
    stats = jax.tree_util.tree_map_with_path(
        lambda path, v: v - 0.01 if path[-1].key == "mean" else v * 1.2, variables["batch_stats"]
    )
    variables = {"params": variables["params"], "batch_stats": stats}
    path = tmp_path / "googlenet.msgpack"
    save_variables(path, variables, model="googlenet", options=options)

    c = _load_config("finetune_digits", f"init_from={path},blocks=1,image_size=32")
    assert c.model.name == "googlenet" and c.model.width_multiplier == 0.125 and c.trainable == "last:1"
    c.dataset.data_dir = str(tmp_path / "tfds")
    c.total_steps, c.num_epochs = 2, 0.0
    c.batch_size, c.eval_batch_size = 16, 64
    c.log_every_steps, c.checkpoint_every_steps = 1, 2
    c.progress_bar = False
    state = jax.device_get(train.train_and_evaluate(c, str(tmp_path / "run")))

    file_params, file_stats = jax.device_get(variables["params"]), jax.device_get(variables["batch_stats"])
    frozen = [k for k in file_params if k not in ("inception5b", "fc")]
    assert len(frozen) > 5
    for k in frozen:
        assert _equal(file_params[k], state.params[k]), k
        if k in file_stats:
            assert _equal(file_stats[k], state.batch_stats[k]), k
    assert not _equal(file_params["inception5b"], state.params["inception5b"])
    assert _equal(file_stats["inception5b"], state.batch_stats["inception5b"])
    assert state.params["fc"]["kernel"].shape[-1] == 10


def test_init_from_remakes_every_familys_head_for_a_new_class_count():
    """A 1000-class file into a 10-class model: only head leaves (BN-Inception's is `Logits`) are re-made."""
    from inception_jax.trainer.checkpoint import merge_init_variables

    target = {
        "params": {"Mixed_5c": {"k": np.zeros((2, 2))}, "Logits": {"Conv2d_1c_1x1": {"kernel": np.zeros((4, 10))}}}
    }
    loaded = {
        "params": {"Mixed_5c": {"k": np.ones((2, 2))}, "Logits": {"Conv2d_1c_1x1": {"kernel": np.ones((4, 1000))}}}
    }
    merged, reinit = merge_init_variables(target, loaded)
    assert reinit == ["params/Logits/Conv2d_1c_1x1/kernel"]
    assert (
        merged["params"]["Mixed_5c"]["k"].sum() == 4
        and merged["params"]["Logits"]["Conv2d_1c_1x1"]["kernel"].sum() == 0
    )
    loaded["params"]["Mixed_5c"]["k"] = np.ones((3, 2))
    with pytest.raises(
        ValueError, match=r"does not fit this model: params/Mixed_5c/k: file \(3, 2\) vs model \(2, 2\)"
    ):
        merge_init_variables(target, loaded)
