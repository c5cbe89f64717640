"""End-to-end trainer tests on 8 fake CPU devices (conftest sets them up).

Every config trains and evaluates under `tfds.testing.mock_data`; resume is bitwise; per-device and
global BatchNorm statistics match hand-computed numbers; eval counts a ragged split exactly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from inception_jax import losses, optim  # noqa: E402
from inception_jax.trainer import finetune, parallel, rundir, train, validation  # noqa: E402
from inception_jax.trainer.config import base_config  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
# Every config file's recipe, with IR-v1, whose recipe drops the aux loss (inception_v2 and
# inception_resnet_v2 share their files' recipes with v3 and v4). Each builds and traces its train
# step; three train and evaluate end to end: RMSProp with an aux head, SGD with two, and a recipe with
# none (a compile each, 20-70 s here). Every variant's steps are lowered in test_lowering.py.
VARIANT_CONFIGS = [
    ("inception_v3", "inception_v3"),
    ("inception_v4", "inception_v4"),
    ("bn_inception", "bn_inception"),
    ("googlenet", "googlenet"),
    ("inception_v4", "inception_resnet_v1"),
]
END_TO_END_CONFIGS = [VARIANT_CONFIGS[i] for i in (0, 3, 4)]


def load_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(f"configs_{name}", os.path.join(CONFIG_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_eight_fake_devices():
    assert jax.device_count() == 8


def _digits_config(data_dir, **overrides):
    c = load_config("digits")
    c.dataset.data_dir = data_dir
    c.total_steps = 4
    c.num_epochs = 0.0
    c.schedule.warmup_epochs = 0.0
    c.log_every_steps = 1
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1
    c.progress_bar = False
    c.batch_size = 16
    c.eval_batch_size = 64
    c.model.width_multiplier = 0.125
    for k, v in overrides.items():
        c[k] = v
    return c


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """4 uninterrupted steps on digits, shared by the resume and init_from tests: (state, root, output)."""
    root = tmp_path_factory.mktemp("straight")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        state = train.train_and_evaluate(_digits_config(str(root / "tfds")), str(root / "a"))
    return state, root, out.getvalue()


def _check_resume_is_bitwise_identical(straight_run, tmp_path, monkeypatch, capsys):
    """4 steps straight == 2 steps + SIGTERM + restart + 2 steps: parameters and metrics, bitwise.

    The final eval covers digits' 297 test images in batches of 64 (8 per device): the padded tail
    of the last batch is masked, nothing dropped or double-counted; `eval_only` then re-evaluates the
    last checkpoint, prints the same numbers and writes no metrics. (One test, so the suite compiles
    this program once.)"""
    straight, root, out = straight_run
    data_dir, run_a = str(root / "tfds"), root / "a"
    saved = json.loads((run_a / "config.json").read_text())
    assert saved["model"]["name"] == "googlenet" and saved["total_steps"] == 4
    env = rundir.read_environment(str(run_a))
    assert env["packages"]["jax"] == jax.__version__ and env["packages"]["flax"] == flax.__version__
    assert (env["device_count"], env["platform"]) == (8, "cpu") and env["cpu"]
    final = rundir.read_metrics(str(run_a))[-1]
    assert final["step"] == 4 and final["eval/examples"] == 297
    assert "googlenet on digits: 1 process(es), 8 device(s); global batch 16 (2 per device" in out
    assert "train step: " in out and "eval step: " in out
    capsys.readouterr()
    train.train_and_evaluate(_digits_config(data_dir, eval_only=True), str(run_a))
    out = capsys.readouterr().out
    assert f"top1 {final['eval/top1']:.4f}  top5 {final['eval/top5']:.4f}  (297 examples)" in out
    assert "eval step: read from the compilation cache in" in out  # compiled by the first call
    assert rundir.read_metrics(str(run_a))[-1] == final

    # Preempt the second run the way a cluster does: SIGTERM arrives during step 2, while the batch of
    # step 3 is being sent to the devices (the trainer keeps one batch in flight ahead of the step).
    real_global_batch = parallel.global_batch
    fed = []

    def sigterm_on_second_batch(local, mesh):
        fed.append(1)
        if len(fed) == 3:
            signal.raise_signal(signal.SIGTERM)
        return real_global_batch(local, mesh)

    handler_before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(parallel, "global_batch", sigterm_on_second_batch)
    train.train_and_evaluate(_digits_config(data_dir), str(tmp_path / "b"))
    monkeypatch.setattr(parallel, "global_batch", real_global_batch)
    assert max(r["step"] for r in rundir.read_metrics(str(tmp_path / "b"))) == 2
    assert signal.getsignal(signal.SIGTERM) == handler_before, "the handler must be restored"

    resumed = train.train_and_evaluate(_digits_config(data_dir), str(tmp_path / "b"))
    for a, b in zip(_leaves(straight), _leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rs]
    assert strip(rundir.read_metrics(str(run_a))) == strip(rundir.read_metrics(str(tmp_path / "b")))


# --- BatchNorm statistics: global batch vs per device, against numpy -----------------------------


class _OneBN(nn.Module):
    in_channels: int = 3
    num_classes: int = 2

    @nn.compact
    def __call__(self, x, train=False, return_endpoints=False):
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3, name="bn")(x)
        feats = jnp.mean(h, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(feats), {"pre_logits": feats, "aux_logits": ()}


@pytest.mark.parametrize("mode", ["global", "per_device"])
def test_batchnorm_statistics_global_vs_per_device(mode):
    import optax

    mesh = parallel.make_mesh()
    n_dev = mesh.devices.size
    rng = np.random.default_rng(0)
    # Each device's slice gets a different offset, so per-device and global variances differ.
    x = rng.normal(size=(2 * n_dev, 4, 4, 3)).astype(np.float32)
    x += np.repeat(np.arange(n_dev, dtype=np.float32), 2)[:, None, None, None]
    labels = (np.arange(2 * n_dev) % 2).astype(np.int32)

    config = validation.validated(_tiny_config(mode))
    model = _OneBN()
    tx = optax.sgd(0.0)
    state = train.init_state(model, tx, config, 4, jax.random.key(0))
    state = jax.device_put(state, parallel.replicated(mesh))
    step = train.make_train_step(model, tx, lambda s: 0.0, config, 2, mesh)
    batch = parallel.global_batch({"image": x, "label": labels}, mesh)
    new_state, _ = step(state, batch, jax.random.key(1))
    got = jax.device_get(new_state.batch_stats["bn"])

    if mode == "global":
        mean = x.mean(axis=(0, 1, 2))
        var = x.var(axis=(0, 1, 2))
    else:  # statistics per device, then the running averages are averaged across devices
        shards = x.reshape(n_dev, 2, 4, 4, 3)
        mean = shards.mean(axis=(1, 2, 3)).mean(0)
        var = shards.var(axis=(1, 2, 3)).mean(0)
    np.testing.assert_allclose(got["mean"], 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["var"], 0.9 + 0.1 * var, rtol=1e-5, atol=1e-6)


def _tiny_config(mode):
    c = base_config()
    c.model.name = "googlenet"
    c.total_steps = 1
    c.bn_statistics = mode
    c.optimizer.weight_decay = 0.0
    return c


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_step_and_checkpoint(tmp_path, monkeypatch):
    """A NaN training loss: "stop" names the step and the last good checkpoint, "skip" leaves the
    parameters untouched and counts the skipped updates. (The images are uint8, which cannot hold a NaN,
    so the training loss itself is poisoned; evaluation is untouched.)"""
    real_total_loss = losses.total_loss

    def nan_loss(*args, **kwargs):
        loss, parts = real_total_loss(*args, **kwargs)
        return loss * jnp.nan, parts

    monkeypatch.setattr(losses, "total_loss", nan_loss)
    c = _digits_config(str(tmp_path / "tfds"))
    with pytest.raises(train.NonFiniteLossError, match=r"NaN or Inf at step 1; the last good checkpoint is none"):
        train.train_and_evaluate(c, str(tmp_path / "w"))

    c.on_nonfinite = "skip"
    state = train.train_and_evaluate(c, str(tmp_path / "skip"))
    assert int(state.nonfinite_skips) == 4
    assert int(state.step) == 0  # no update was applied, so the schedule has not moved either
    assert all(np.isfinite(x).all() for x in _leaves(state))
    records = [r for r in rundir.read_metrics(str(tmp_path / "skip")) if "train/nonfinite_skips" in r]
    assert records[-1]["train/nonfinite_skips"] == 4
    # The logged learning rate is the one optax applies: still the first step's after 4 skips.
    assert [r["train/learning_rate"] for r in records] == [pytest.approx(c.schedule.base_learning_rate)] * 4


def _check_init_from_reinitialises_only_the_classifier(straight_run, tmp_path):
    donor, root, _ = straight_run
    c = load_config("googlenet", "runlocal")
    c.dataset.name = "imagenet2012"
    c.input.image_size = 32
    c.model.width_multiplier = 0.125
    c.model.aux_logits = False
    c.model.dropout_rate = 0.0
    c.aux_loss_weights = ()
    c.schedule.base_learning_rate = 1e-9
    c.total_steps = 1
    c.progress_bar = False
    c.init_from = str(root / "a")
    with tfds.testing.mock_data(num_examples=8):
        state = train.train_and_evaluate(c, str(tmp_path / "finetune"))
    ours, theirs = jax.device_get(state.params), jax.device_get(donor.params)
    assert ours["fc"]["kernel"].shape[-1] == 1000 and theirs["fc"]["kernel"].shape[-1] == 10
    np.testing.assert_allclose(ours["conv1"]["conv"]["kernel"], theirs["conv1"]["conv"]["kernel"], atol=1e-6)


@pytest.mark.slow
def test_a_straight_run_resumes_bitwise_and_seeds_init_from(straight_run, tmp_path, monkeypatch, capsys):
    """The checks that share the straight run, in one test: under xdist's work stealing a module fixture
    runs again on each worker that takes one of its tests."""
    _check_resume_is_bitwise_identical(straight_run, tmp_path / "resume", monkeypatch, capsys)
    _check_init_from_reinitialises_only_the_classifier(straight_run, tmp_path / "init_from")


def _small_config(config_file, name):
    arg = "runlocal" if config_file == name else f"runlocal,model={name}"
    config = load_config(config_file, arg)
    assert config.model.name == name
    config.total_steps = 2
    config.num_epochs = 0.0
    config.checkpoint_every_steps = 2
    config.log_every_steps = 1
    config.progress_bar = False
    config.dataset.name = "imagenet2012"
    config.input.image_size = 75 if name != "googlenet" else 32
    config.model.width_multiplier = 0.125
    config.model.num_classes = 1000
    return config


@pytest.mark.parametrize("config_file, name", VARIANT_CONFIGS, ids=[m for _, m in VARIANT_CONFIGS])
def test_every_config_builds_its_train_step(config_file, name):
    """The recipe as the trainer builds it (validated config, optimizer, schedule, state, step), traced
    without compiling: a loss per aux weight, float32 metrics, a state of the same structure."""
    config = validation.validated(_small_config(config_file, name))
    mesh = parallel.make_mesh()
    model = train.build_model(config, 1000)
    size, batch = config.input.image_size, config.batch_size
    tx, schedule = optim.make_optimizer(config, 10, config.total_steps)
    state = jax.eval_shape(lambda k: train.init_state(model, tx, config, size, k), jax.random.key(0))
    step = train.make_train_step(model, tx, schedule, config, 1000, mesh)
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    new_state, metrics = jax.eval_shape(step, state, {"image": images, "label": labels}, jax.random.key(1))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert len(config.aux_loss_weights) == model.num_aux_heads
    assert {f"train/loss_aux_{i}" for i in range(model.num_aux_heads)} <= set(metrics)
    assert metrics["train/loss"].shape == () and metrics["train/loss"].dtype == jnp.float32


@pytest.mark.slow
@pytest.mark.parametrize("config_file, name", END_TO_END_CONFIGS, ids=[m for _, m in END_TO_END_CONFIGS])
def test_configs_train_two_steps_and_evaluate(config_file, name, tmp_path):
    config = _small_config(config_file, name)
    with tfds.testing.mock_data(num_examples=12):
        train.train_and_evaluate(config, str(tmp_path))
    records = rundir.read_metrics(str(tmp_path))
    train_records = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train_records] == [1, 2]
    assert all(np.isfinite(r["train/loss"]) and r["train/loss"] > 0 for r in train_records)
    if config.aux_loss_weights:
        assert all(f"train/loss_aux_{i}" in train_records[0] for i in range(len(config.aux_loss_weights)))
    final = records[-1]
    assert final["step"] == 2 and final["eval/examples"] == 12
    assert 0.0 <= final["eval/top1"] <= final["eval/top5"] <= 1.0
    assert os.path.exists(tmp_path / "config.json")
    assert os.listdir(tmp_path / "tensorboard")
    assert os.path.isdir(tmp_path / "checkpoints" / "2")


def test_checkpoint_restores_onto_another_device_count(tmp_path):
    import optax

    from inception_jax.trainer import checkpoint as ckpt_lib

    config = validation.validated(_tiny_config("global"))
    model, tx = _OneBN(), optax.sgd(0.1)
    eight = parallel.make_mesh()
    state = jax.device_put(train.init_state(model, tx, config, 4, jax.random.key(0)), parallel.replicated(eight))
    saver = ckpt_lib.Checkpointer(str(tmp_path))
    saver.save(3, state, {"step": 3})
    saver.close()

    two = parallel.make_mesh(jax.devices()[:2])
    abstract = jax.eval_shape(lambda: train.init_state(model, tx, config, 4, jax.random.key(0)))
    target = ckpt_lib.abstract_like(abstract, jax.tree.map(lambda _: parallel.replicated(two), abstract))
    step, restored, meta = ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(target)
    assert step == 3 and meta["step"] == 3
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        assert a.sharding.mesh.devices.size == 2
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- Gradient accumulation, per-device vs global updates, EMA of BatchNorm statistics --------------


class _NoBN(nn.Module):
    """A conv + dense classifier without BatchNorm: accumulated and whole-batch gradients must agree."""

    in_channels: int = 3
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train=False, return_endpoints=False):
        h = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        feats = jnp.mean(h, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(feats), {"pre_logits": feats, "aux_logits": ()}


def _optimizer_config(mode, **overrides):
    c = _tiny_config(mode)
    c.optimizer.name = "rmsprop"  # the papers' RMSProp with momentum, clipping and L2: a real optimizer
    c.optimizer.weight_decay = 4e-5
    c.grad_clip_norm = 2.0
    c.schedule.base_learning_rate = 0.045
    for k, v in overrides.items():
        c[k] = v
    return validation.validated(c)


def _steps(model, config, batches, size, num_classes, n_steps=2):
    from inception_jax import optim

    mesh = parallel.make_mesh()
    tx, schedule = optim.make_optimizer(config, 100, 100)
    state = jax.device_put(train.init_state(model, tx, config, size, jax.random.key(0)), parallel.replicated(mesh))
    step = train.make_train_step(model, tx, schedule, config, num_classes, mesh)
    metrics = None
    for batch in batches[:n_steps]:
        state, metrics = step(state, parallel.global_batch(batch, mesh), jax.random.key(1))
    return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize("mode", ["global", "per_device"])
def test_gradient_accumulation_equals_one_big_batch(mode):
    """4 micro-batches of 8 (one per device each) give the update of one batch of 32, to float rounding."""
    rng = np.random.default_rng(0)
    batches = [
        {"image": rng.normal(size=(32, 6, 6, 3)).astype(np.float32), "label": rng.integers(0, 3, 32).astype(np.int32)}
        for _ in range(2)
    ]
    whole, m_whole = _steps(_NoBN(), _optimizer_config(mode), batches, 6, 3)
    accumulated, m_acc = _steps(_NoBN(), _optimizer_config(mode, grad_accum_steps=4), batches, 6, 3)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(accumulated.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for key in ("train/loss", "train/grad_norm", "train/top1"):
        np.testing.assert_allclose(m_whole[key], m_acc[key], rtol=1e-5)
    assert int(accumulated.step) == 2  # one update per step, whatever the number of micro-batches


def test_logged_norms_are_the_gradients_and_the_updated_parameters():
    """`train/param_norm` is the norm after the step's update; `train/grad_norm` that of the gradient the
    update used (before clipping), here recomputed by hand from the same batch and parameters."""
    from inception_jax import optim

    rng = np.random.default_rng(4)
    batch = {"image": rng.normal(size=(8, 6, 6, 3)).astype(np.float32), "label": rng.integers(0, 3, 8).astype(np.int32)}
    config = _optimizer_config("global")
    tx, _ = optim.make_optimizer(config, 100, 100)
    before = train.init_state(_NoBN(), tx, config, 6, jax.random.key(0))
    after, metrics = _steps(_NoBN(), config, [batch], 6, 3, n_steps=1)
    squares = lambda tree: sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))
    np.testing.assert_allclose(metrics["train/param_norm"], np.sqrt(squares(after.params)), rtol=1e-6)
    assert not np.isclose(metrics["train/param_norm"], np.sqrt(squares(before.params)), rtol=1e-6)

    def loss(params):
        return train._forward_loss(_NoBN(), config, 3, finetune.Plan(), params, {}, batch, jax.random.key(1))[0]

    np.testing.assert_allclose(metrics["train/grad_norm"], np.sqrt(squares(jax.grad(loss)(before.params))), rtol=1e-5)


def test_gradient_accumulation_normalises_each_micro_batch_by_its_own_statistics():
    """With BatchNorm, the running mean after one step is that of 2 sequential micro-batch updates."""
    x = np.random.default_rng(1).normal(size=(16, 4, 4, 3)).astype(np.float32)
    labels = (np.arange(16) % 2).astype(np.int32)
    state, _ = _steps(
        _OneBN(), _optimizer_config("global", grad_accum_steps=2), [{"image": x, "label": labels}], 4, 2, n_steps=1
    )
    micro = [x.reshape(8, 2, 4, 4, 3)[:, i] for i in range(2)]  # rows i, i + 2, ...: micro-batch i
    mean = np.zeros(3)
    for mb in micro:
        mean = 0.9 * mean + 0.1 * mb.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(state.batch_stats["bn"]["mean"], mean, rtol=1e-5, atol=1e-6)


def test_per_device_and_global_batchnorm_give_the_same_update_when_statistics_agree():
    """Every device gets the same two examples, so per-device statistics equal the global ones: both
    paths must then make the same RMSProp update (gradients averaged across devices, not summed)."""
    n_dev = jax.device_count()
    rng = np.random.default_rng(2)
    batches = []
    for _ in range(2):
        two = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
        batches.append({"image": np.tile(two, (n_dev, 1, 1, 1)), "label": np.tile([0, 1], n_dev).astype(np.int32)})
    results = {mode: _steps(_OneBN(), _optimizer_config(mode), batches, 4, 2) for mode in ("global", "per_device")}
    (g, mg), (p, mp) = results["global"], results["per_device"]
    for a, b in zip(
        jax.tree.leaves((g.params, g.batch_stats, g.opt_state)),
        jax.tree.leaves((p.params, p.batch_stats, p.opt_state)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    initial, _ = _steps(_OneBN(), _optimizer_config("global"), batches, 4, 2, n_steps=0)
    assert np.abs(g.params["fc"]["kernel"] - initial.params["fc"]["kernel"]).max() > 1e-3  # it did move
    np.testing.assert_allclose(mg["train/loss"], mp["train/loss"], rtol=1e-6)


def test_ema_averages_batchnorm_statistics_as_hand_computed():
    """ema_batch_stats follows TF's ExponentialMovingAverage of the running statistics: decay
    min(d, (1 + n) / (10 + n)) with n the updates before, starting from the initial statistics."""
    import optax

    config = validation.validated(_tiny_config("global"))
    config.ema_decay = 0.5
    model, mesh = _OneBN(), parallel.make_mesh()
    tx = optax.sgd(0.0)
    state = jax.device_put(train.init_state(model, tx, config, 4, jax.random.key(0)), parallel.replicated(mesh))
    step = train.make_train_step(model, tx, lambda s: 0.0, config, 2, mesh)
    rng = np.random.default_rng(3)
    mean, var = np.zeros(3), np.ones(3)  # the running statistics, by hand (momentum 0.9)
    ema_mean, ema_var = mean.copy(), var.copy()
    for n in range(3):
        x = (rng.normal(size=(16, 4, 4, 3)) * (n + 1) + n).astype(np.float32)
        state, _ = step(
            state, parallel.global_batch({"image": x, "label": np.zeros(16, np.int32)}, mesh), jax.random.key(1)
        )
        mean = 0.9 * mean + 0.1 * x.mean(axis=(0, 1, 2))
        var = 0.9 * var + 0.1 * x.var(axis=(0, 1, 2))
        d = min(0.5, (1 + n) / (10 + n))
        ema_mean, ema_var = d * ema_mean + (1 - d) * mean, d * ema_var + (1 - d) * var
    got = jax.device_get(state.ema_batch_stats["bn"])
    np.testing.assert_allclose(got["mean"], ema_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["var"], ema_var, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.device_get(state.batch_stats["bn"]["mean"]), mean, rtol=1e-5, atol=1e-6)


def test_checkpoints_from_before_the_bn_ema_still_restore(tmp_path):
    """A TrainState saved without `ema_batch_stats` (the layout before it existed) restores, passes its
    digest check, and gets the live statistics as the starting average."""
    import flax
    import optax

    from inception_jax.trainer import checkpoint as ckpt_lib

    @flax.struct.dataclass
    class OldTrainState:
        step: jax.Array
        params: object
        batch_stats: object
        opt_state: object
        ema_params: object
        nonfinite_skips: jax.Array

    config = validation.validated(_tiny_config("global"))
    config.ema_decay = 0.999
    model, tx, mesh = _OneBN(), optax.sgd(0.1), parallel.make_mesh()
    new = train.init_state(model, tx, config, 4, jax.random.key(0))
    stats = {"bn": {"mean": np.full(3, 0.25, np.float32), "var": np.full(3, 2.0, np.float32)}}
    old = OldTrainState(
        step=np.int32(7),
        params=jax.device_get(new.params),
        batch_stats=stats,
        opt_state=jax.device_get(new.opt_state),
        ema_params=jax.device_get(new.ema_params),
        nonfinite_skips=np.int32(0),
    )
    saver = ckpt_lib.Checkpointer(str(tmp_path))
    saver.save(7, old, {"step": 7})
    saver.close()

    abstract = jax.eval_shape(lambda: new)
    target = ckpt_lib.abstract_like(abstract, jax.tree.map(lambda _: parallel.replicated(mesh), abstract))
    step, restored, _ = ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(target)
    assert step == 7 and restored.ema_batch_stats is None
    state = train.fill_missing_fields(restored, config)
    assert int(state.step) == 7
    np.testing.assert_array_equal(state.ema_batch_stats["bn"]["var"], 2.0)
    np.testing.assert_array_equal(state.batch_stats["bn"]["mean"], 0.25)


def test_sharded_state_round_trips_through_a_checkpoint(tmp_path):
    """A leaf split over the 8 devices is saved shard by shard and restores onto 2 devices intact."""
    from inception_jax.trainer import checkpoint as ckpt_lib

    eight = parallel.make_mesh()
    value = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)
    tree = {
        "sharded": jax.device_put(value, parallel.data_sharding(eight)),
        "replicated": jax.device_put(np.float32(5.0), parallel.replicated(eight)),
    }
    saver = ckpt_lib.Checkpointer(str(tmp_path))
    saver.save(1, tree, {"step": 1})
    saver.close()
    two = parallel.make_mesh(jax.devices()[:2])
    target = {
        "sharded": jax.ShapeDtypeStruct((64, 3), np.float32, sharding=parallel.data_sharding(two)),
        "replicated": jax.ShapeDtypeStruct((), np.float32, sharding=parallel.replicated(two)),
    }
    _, restored, _ = ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(target)
    np.testing.assert_array_equal(np.asarray(restored["sharded"]), value)
    assert restored["sharded"].sharding.mesh.devices.size == 2 and float(restored["replicated"]) == 5.0


class _SlowOnDevice(nn.Module):
    """A classifier whose forward pass holds the devices for a while (a chain of large matrix products)."""

    num_classes: int = 10
    in_channels: int = 3
    num_aux_heads: int = 0

    @nn.compact
    def __call__(self, x, train=False, return_endpoints=False):
        feats = jnp.mean(x, axis=(1, 2))
        w = self.param("w", nn.initializers.orthogonal(), (256, 256))
        busy = jnp.ones((256, 256)) * jnp.mean(feats)
        for _ in range(8):
            busy = jnp.tanh(busy @ w)
        logits = nn.Dense(self.num_classes, name="fc")(feats) + 1e-3 * jnp.mean(busy)
        return logits, {"pre_logits": feats, "aux_logits": ()}


def test_the_loop_dispatches_steps_without_waiting_for_them(tmp_path, monkeypatch):
    """Between logging steps the host never waits for a step: when it dispatches step 4, step 1 is
    still running (each step holds the devices for tens of milliseconds; dispatching takes far less)."""
    from inception_jax.trainer import compilation

    monkeypatch.setattr(train, "build_model", lambda config, num_classes: _SlowOnDevice(num_classes))
    in_flight = []
    compile_step = compilation.compile_step

    def counting(name, *args, **kwargs):
        compiled = compile_step(name, *args, **kwargs)
        if name != "train step":
            return compiled
        outputs = []

        def dispatch(*step_args):
            in_flight.append(sum(not m["train/loss"].is_ready() for m in outputs))
            state, metrics = compiled(*step_args)
            outputs.append(metrics)
            return state, metrics

        return dispatch

    monkeypatch.setattr(compilation, "compile_step", counting)
    config = _digits_config(str(tmp_path / "tfds"), log_every_steps=8, checkpoint_every_steps=8)
    config.total_steps = 8
    train.train_and_evaluate(config, str(tmp_path / "run"))
    assert len(in_flight) == 8
    assert max(in_flight) >= 3, in_flight  # the previous loop waited for each step before the next but one
