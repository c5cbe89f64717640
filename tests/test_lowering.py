"""Every variant's train and eval steps lower for GPU and TPU on this CPU-only machine (`jax.export`),
and the programs take the forms `kernels="auto"` promises: XLA's operations for accelerators, the CPU
forms for CPUs. The CPU forms run in the named scope `kernels.CPU_FORM_SCOPE`, which the lowered
program's locations keep; XLA's max-pool derivative is `stablehlo.select_and_scatter`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax import export

from inception_jax import kernels, optim
from inception_jax.models import layers, registry
from inception_jax.trainer import parallel, train, validation
from inception_jax.trainer.config import base_config

ACCELERATORS = ("cuda", "tpu")
SELECT_AND_SCATTER = "stablehlo.select_and_scatter"
BATCH = 16


def _config(name: str, **overrides):
    """The smallest instance of the variant: a quarter of the widths, one block per stage, its minimum
    input size; the programs have the same operations at any size."""
    c = base_config()
    c.model.name = name
    c.model.width_multiplier = 0.25
    options = registry.model_options(name)
    if "depths" in options:
        c.model.depths = (1, 1, 1)
    if "aux_logits" in options and name != "fid_inception_v3":
        c.model.aux_logits = True
    c.input.image_size = registry.data_config(name).min_input_size
    c.batch_size = c.eval_batch_size = BATCH
    c.total_steps = 100
    c.grad_clip_norm = 2.0
    for key, value in overrides.items():
        *parents, leaf = key.split("__")
        node = c
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return validation.validated(c)


def _abstract(tree, sharding):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def _exported_steps(config, platform: str, platforms: tuple[str, ...], *, eval_step: bool):
    """The train step (and the eval step) built for `platform`, exported for `platforms`."""
    mesh = parallel.make_mesh()
    replicated, rows = parallel.replicated(mesh), parallel.data_sharding(mesh)
    model = train.build_model(config, 10)
    size = config.input.image_size
    config.aux_loss_weights = (0.3,) * model.num_aux_heads
    tx, schedule = optim.make_optimizer(config, 100, config.total_steps)
    state = _abstract(
        jax.eval_shape(lambda k: train.init_state(model, tx, config, size, k), jax.random.key(0)), replicated
    )
    images = jax.ShapeDtypeStruct((BATCH, size, size, 3), jnp.uint8, sharding=rows)
    labels = jax.ShapeDtypeStruct((BATCH,), jnp.int32, sharding=rows)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
    step = train.make_train_step(model, tx, schedule, config, 10, mesh, platform=platform)
    exported = [export.export(step, platforms=platforms)(state, {"image": images, "label": labels}, key)]
    if eval_step:
        evaluate = train.make_eval_step(model, mesh, config, platform=platform)
        mask = jax.ShapeDtypeStruct((BATCH,), jnp.bool_, sharding=rows)
        exported.append(
            export.export(evaluate, platforms=platforms)(
                state.params, state.batch_stats, {"image": images, "label": labels, "mask": mask}
            )
        )
    return exported


@pytest.mark.slow
@pytest.mark.parametrize("name", registry.list_models())
def test_every_step_lowers_for_gpu_and_tpu_with_xlas_operations(name):
    """The plain step (global BatchNorm, float32) with the eval step, and the papers' distributed recipe
    (per-device BatchNorm, 2 micro-batches, EMA, clipping) in bfloat16, with scanned stages where the
    variant has them: for cuda and tpu together, with XLA's max-pool derivative and none of the CPU forms."""
    plain, evaluate = _exported_steps(_config(name), "cuda", ACCELERATORS, eval_step=True)
    scan = {"model__scan_blocks": True} if "scan_blocks" in registry.model_options(name) else {}
    (recipe,) = _exported_steps(
        _config(name, bn_statistics="per_device", grad_accum_steps=2, ema_decay=0.999, model__dtype="bfloat16", **scan),
        "tpu",
        ACCELERATORS,
        eval_step=False,
    )
    assert plain.platforms == recipe.platforms == ACCELERATORS
    texts = {what: e.mlir_module() for what, e in (("plain", plain), ("eval", evaluate), ("recipe", recipe))}
    for text in texts.values():
        assert kernels.CPU_FORM_SCOPE not in text
    assert SELECT_AND_SCATTER in texts["plain"] and SELECT_AND_SCATTER in texts["recipe"]
    assert "stablehlo.convolution" in texts["eval"]
    # Mixed precision: bf16 convolutions, float32 parameters, BatchNorm statistics, EMA and loss.
    convolutions = [line for line in texts["recipe"].splitlines() if "stablehlo.convolution" in line]
    assert convolutions and all("bf16" in line.split("->")[-1] for line in convolutions)
    state, metrics = jax.tree.unflatten(recipe.out_tree, recipe.out_avals)
    for tree in (state.params, state.batch_stats, state.ema_params, state.ema_batch_stats):
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
    assert metrics["train/loss"].dtype == jnp.float32


@pytest.mark.slow
@pytest.mark.parametrize("name", ["googlenet", "inception_resnet_v2"])
def test_cpu_steps_take_the_cpu_forms(name):
    train_text, eval_text = (e.mlir_module() for e in _exported_steps(_config(name), "cpu", ("cpu",), eval_step=True))
    assert kernels.CPU_FORM_SCOPE in train_text and SELECT_AND_SCATTER not in train_text
    assert kernels.CPU_FORM_SCOPE in eval_text  # its 1x1 convolutions


class _Unit(nn.Module):
    """A model's kinds of layer: a 1x1 and a 3x3 ConvBN, a max pool, a linear head."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = layers.ConvBN(8, 1)(x, train)
        x = layers.max_pool(layers.ConvBN(8, 3, padding=1)(x, train), 3, 2)
        return nn.Dense(3)(jnp.mean(x, (1, 2)))


def test_auto_outside_the_trainer_is_decided_by_the_lowering_platform():
    """A notebook's own `jax.jit` of a train-mode gradient: "auto" stages both forms, and the platform the
    program is lowered for picks one, whichever machine traces it."""
    unit = _Unit()
    x = jnp.ones((4, 9, 9, 3))
    variables = unit.init(jax.random.key(0), x)

    def loss(params):
        out, _ = unit.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(out**2)

    grad = jax.jit(jax.grad(loss))
    texts = {p: export.export(grad, platforms=(p,))(variables["params"]).mlir_module() for p in ("cpu", "cuda", "tpu")}
    assert kernels.CPU_FORM_SCOPE in texts["cpu"] and SELECT_AND_SCATTER not in texts["cpu"]
    for p in ("cuda", "tpu"):
        assert kernels.CPU_FORM_SCOPE not in texts[p] and SELECT_AND_SCATTER in texts[p]
    with kernels.use("cpu"):
        forced = jax.jit(jax.grad(loss))  # a new function: traced again, inside the scope
        assert kernels.CPU_FORM_SCOPE in export.export(forced, platforms=("cuda",))(variables["params"]).mlir_module()
