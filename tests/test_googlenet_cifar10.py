"""Issue 8: `configs/googlenet_cifar10.py` carries the published Keras GoogLeNet CIFAR-10 recipe and
trains, with both aux heads, under `tfds.testing.mock_data`."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from inception_jax import optim  # noqa: E402
from inception_jax.trainer import rundir, train  # noqa: E402

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "googlenet_cifar10.py")
CIFAR10_TRAIN = 50_000


def load(arg=None):
    spec = importlib.util.spec_from_file_location("configs_googlenet_cifar10", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_the_config_is_the_keras_recipe():
    c = load()
    assert c.model.name == "googlenet" and c.model.aux_logits and tuple(c.aux_loss_weights) == (0.3, 0.3)
    assert c.dataset.name == "cifar10" and c.input.image_size == 224
    assert (c.batch_size, c.num_epochs) == (256, 25.0)
    assert (c.optimizer.name, c.optimizer.momentum, c.optimizer.nesterov) == ("sgd", 0.9, False)
    # 0.01, x 0.96 after every 8 epochs (195 steps per epoch at batch 256), flat in between.
    steps_per_epoch = CIFAR10_TRAIN // c.batch_size
    total = optim.steps_from(c, steps_per_epoch)
    schedule = optim.make_schedule(c, steps_per_epoch, total)
    assert total == 25 * steps_per_epoch
    for epoch, lr in ((0, 0.01), (7.9, 0.01), (8, 0.0096), (16, 0.009216), (24, 0.00884736)):
        assert float(schedule(int(epoch * steps_per_epoch))) == pytest.approx(lr, rel=1e-6), epoch


@pytest.mark.slow
def test_it_trains_both_aux_heads_and_evaluates(tmp_path):
    c = load()
    c.input.image_size = 32  # shrunk for the test; the recipe's 224 is checked above
    c.model.width_multiplier = 0.125
    c.batch_size = c.eval_batch_size = 16
    c.num_epochs, c.total_steps = 0.0, 2
    c.log_every_steps = 1
    c.progress_bar = False
    with tfds.testing.mock_data(num_examples=16):
        train.train_and_evaluate(c, str(tmp_path))
    records = rundir.read_metrics(str(tmp_path))
    steps = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        parts = r["train/loss_main"] + 0.3 * (r["train/loss_aux_0"] + r["train/loss_aux_1"])
        assert np.isfinite(r["train/loss"]) and r["train/loss"] == pytest.approx(parts, rel=1e-4)
    assert records[-1]["step"] == 2 and records[-1]["eval/examples"] == 16
