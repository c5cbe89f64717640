"""Keras weight import (`inception_jax.tools.convert.from_keras`) against Keras itself.

One subprocess builds randomly initialised `keras.applications` models (seeded, so every machine gets
the same ones), calibrates their BatchNorm (REFERENCES.md §7: random beta, moving statistics taken from
a train-mode batch, so eval logits are O(1) and a wrong mapping shows), writes them in every supported
format and records their outputs twice: in float32, and from a float64 copy with the same weights.
It runs Keras on the TensorFlow backend: on the JAX backend Keras compiles each op on first use and
the subprocess takes ~60 s instead of ~25 s on a 2-core machine (the tests pass on both; the files are
the same).

Each file is then imported here. Why float64, as in test_inception_v4.py: a calibrated random
Inception-v3 at 150 px is chaotic enough that Keras' own float32 logits lie up to 1.3e-4 of their
scale from its float64 ones (measured over seven weight draws: 3e-5 to 1.3e-4; ours 2e-5 to 8e-5), so two
float32 runs can miss a 1e-4 tolerance with both mappings right. So the mapping is checked exactly, our
float64 forward pass against Keras' (they agree to ~1e-13), and our float32 outputs are held to the
exact ones at the issue's tolerance or at four times Keras' own float32 error, whichever is larger.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import filelock
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import assert_float32_as_exact_as_reference, assert_logits_close

from inception_jax.models import stacking
from inception_jax.tools import convert
from inception_jax.tools.convert import WeightMismatchError, from_keras, keras_model_options, keras_weights
from inception_jax.tools.convert import __main__ as convert_cli

KERAS_BACKEND = "tensorflow"

# Runs in a fresh interpreter: this process may have imported Keras with another backend already.
KERAS_SCRIPT = r"""
import json, sys
import numpy as np
import h5py, keras
from keras.src.legacy.saving import legacy_h5_format

out = sys.argv[1]
keras.utils.set_random_seed(0)  # the initialisers: the same models on every machine
rng = np.random.default_rng(0)
images = lambda n, size: rng.uniform(-1, 1, (n, size, size, 3)).astype("float32")


def calibrate(model, size):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # moving statistics := this batch's
            layer.beta.assign(rng.uniform(-0.2, 0.2, layer.beta.shape).astype("float32"))
        elif getattr(layer, "bias", None) is not None:  # IR-v2 "up" convs, the classifier
            layer.bias.assign(rng.uniform(-0.2, 0.2, layer.bias.shape).astype("float32"))
    model(images(4, size), training=True)


def exact_copy(model, app, size, classes):  # every weight and activation in float64: no float32 rounding
    keras.config.set_dtype_policy("float64")
    try:
        copy = app(weights=None, classifier_activation=None, input_shape=(size, size, 3), classes=classes)
    finally:
        keras.config.set_dtype_policy("float32")
    copy.set_weights([w.astype("float64") for w in model.get_weights()])  # moving statistics included
    return copy


def build(tag, app, size, classes):
    model = app(weights=None, classifier_activation=None, input_shape=(size, size, 3), classes=classes)
    calibrate(model, size)
    exact = exact_copy(model, app, size, classes)
    x = images(2, size)
    np.savez(f"{out}/{tag}.npz", x=x, logits=np.asarray(model(x, training=False)),
             logits64=np.asarray(exact(x.astype("float64"), training=False)))
    return model, exact, x


def legacy_weights(model, path):  # the layout of the keras-applications downloads
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


weighted = lambda model: [[type(l).__name__, l.name] for l in model.layers if l.weights]
m, _, _ = build("v3_299", keras.applications.InceptionV3, 299, 1000)
m.save(f"{out}/v3_299.keras")
order = {"inception_v3": weighted(m)}
m, m64, x = build("v3_150", keras.applications.InceptionV3, 150, 10)
m.save(f"{out}/v3_150_model.h5")  # whole model, legacy HDF5 (a `model_weights` group)
features = lambda m: keras.Model(m.inputs, m.get_layer("mixed10").output)  # what include_top=False builds
legacy_weights(features(m), f"{out}/v3_150_notop.h5")
pooled = lambda m, x: np.asarray(features(m)(x, training=False)).mean(axis=(1, 2))
np.savez(f"{out}/v3_150_notop.npz", x=x, features=pooled(m, x), features64=pooled(m64, x.astype("float64")))
m, _, _ = build("irv2_299", keras.applications.InceptionResNetV2, 299, 1000)
m.save_weights(f"{out}/irv2_299.weights.h5")
legacy_weights(m, f"{out}/irv2_299_legacy.h5")
order["inception_resnet_v2"] = weighted(m)
json.dump(order, open(f"{out}/layer_order.json", "w"))
"""


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory, worker_id):
    """The Keras models' files and outputs, written once per test session. Under xdist the workers share
    them (the session's base directory, under a file lock): with work stealing, several workers may run
    this file's tests, and the Keras subprocess costs ~25 s each time."""
    if worker_id == "master":
        out = tmp_path_factory.mktemp("keras")
    else:
        out = tmp_path_factory.getbasetemp().parent / "keras_reference"
    with filelock.FileLock(f"{out}.lock"):
        if not (out / "done").exists():
            out.mkdir(exist_ok=True)
            env = {**os.environ, "KERAS_BACKEND": KERAS_BACKEND, "TF_CPP_MIN_LOG_LEVEL": "2"}
            proc = subprocess.run(
                [sys.executable, "-c", KERAS_SCRIPT, str(out)], env=env, capture_output=True, text=True, timeout=600
            )
            assert proc.returncode == 0, f"the Keras reference script failed:\n{proc.stderr[-4000:]}"
            (out / "done").touch()
    return out


_runs: dict = {}


def run_ours(model, variables, x):
    """Eval-mode `(logits, out)`, one compile per model configuration."""
    if model not in _runs:
        _runs[model] = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return _runs[model](variables, x)


def run_ours_float64(model, variables, x):
    """Eval-mode logits with every parameter and activation in float64 (the exact function)."""
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(v64, jnp.asarray(x, jnp.float64))
        return np.asarray(logits)


def assert_same_tree(a, b):
    fa, fb = jax.tree_util.tree_flatten_with_path(a), jax.tree_util.tree_flatten_with_path(b)
    assert [p for p, _ in fa[0]] == [p for p, _ in fb[0]]
    for (path, x), (_, y) in zip(fa[0], fb[0]):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def v3_small(keras_files):
    """InceptionV3 at 150 px with 10 classes, from a whole-model legacy `.h5`."""
    model, variables = from_keras("inception_v3", keras_files / "v3_150_model.h5")
    ref = np.load(keras_files / "v3_150.npz")
    logits, out = run_ours(model, variables, ref["x"])
    return model, variables, ref, logits, out


@pytest.fixture(scope="module")
def irv2(keras_files):
    """InceptionResNetV2 at 299 px from a Keras 3 `.weights.h5` (mapped by `model.layers` order)."""
    return from_keras("inception_resnet_v2", keras_files / "irv2_299.weights.h5")


def test_inception_v3_keras_archive_299(keras_files):
    model, variables = from_keras("inception_v3", keras_files / "v3_299.keras")
    assert model.num_classes == 1000
    assert not model.bn_use_scale and model.bn_momentum == 0.99 and not model.avg_pool_count_include_pad
    assert "scale" not in variables["params"]["Mixed_5b"]["branch1x1"]["bn"]  # Keras stores no gamma
    ref = np.load(keras_files / "v3_299.npz")
    logits, _ = run_ours(model, variables, ref["x"])
    assert_float32_as_exact_as_reference(logits, ref["logits"], ref["logits64"])


def test_inception_v3_legacy_model_h5_150px_10_classes(v3_small):
    model, variables, ref, logits, _ = v3_small
    assert model.num_classes == 10
    assert_logits_close(run_ours_float64(model, variables, ref["x"]), ref["logits64"], rel=1e-9)
    # XLA's operations in place of the CPU forms ("auto" on this CPU): the same exact function
    assert_logits_close(run_ours_float64(model.clone(kernels="xla"), variables, ref["x"]), ref["logits64"], rel=1e-9)
    assert_float32_as_exact_as_reference(logits, ref["logits"], ref["logits64"])


def test_include_top_false_gives_the_pooled_features(keras_files, v3_small):
    model, variables = from_keras("inception_v3", keras_files / "v3_150_notop.h5")
    assert model.num_classes == 0
    _, full_variables, _, _, _ = v3_small
    assert_same_tree(variables["batch_stats"], full_variables["batch_stats"])
    assert_same_tree(variables["params"], {k: v for k, v in full_variables["params"].items() if k != "fc"})
    ref = np.load(keras_files / "v3_150_notop.npz")
    features, out = run_ours(model, variables, ref["x"])  # num_classes=0: the logits are pre_logits
    assert_float32_as_exact_as_reference(out["pre_logits"], ref["features"], ref["features64"])
    np.testing.assert_array_equal(np.asarray(features), np.asarray(out["pre_logits"]))


def test_inception_resnet_v2_weights_h5_299(keras_files, irv2):
    model, variables = irv2
    assert model.num_classes == 1000
    ref = np.load(keras_files / "irv2_299.npz")
    assert_logits_close(run_ours_float64(model, variables, ref["x"]), ref["logits64"], rel=1e-9)
    logits, _ = run_ours(model, variables, ref["x"])
    assert_float32_as_exact_as_reference(logits, ref["logits"], ref["logits64"])


def test_inception_resnet_v2_legacy_h5_gives_the_same_variables(keras_files, irv2):
    """The same Keras model saved in the downloads' legacy layout, mapped by layer names instead."""
    model, variables = from_keras("inception_resnet_v2", keras_files / "irv2_299_legacy.h5")
    assert model == irv2[0]
    assert_same_tree(variables, irv2[1])
    scanned, stacked = from_keras("inception_resnet_v2", keras_files / "irv2_299_legacy.h5", scan_blocks=True)
    assert scanned.scan_blocks and "repeat_0-9" in stacked["params"]
    assert_same_tree(stacking.to_layout(stacked, model), irv2[1])


@pytest.mark.parametrize("name", keras_weights.SUPPORTED)
def test_rebuilt_layer_order_is_keras_model_layers_order(keras_files, name):
    """`.weights.h5` files depend on it: our graph's `keras_layer_order` names, via creation order,
    exactly the weighted layers of Keras' `model.layers`."""
    keras_order = json.loads((keras_files / "layer_order.json").read_text())[name]
    graph = keras_weights._GRAPHS[name]()
    explicit, auto = {s.keras_name for s in graph.slots.values()}, {}
    for cls, kind in (("Conv2D", "conv"), ("BatchNormalization", "bn"), ("Dense", "dense")):
        names = sorted(
            (n for c, n in keras_order if c == cls and n not in explicit),
            key=lambda n: keras_weights._split_key(n)[::-1],
        )
        auto.update(zip([s for s in graph.creation_order() if s.kind == kind and not s.keras_name], names))
    assert [s.keras_name or auto[s] for s in graph.keras_layer_order()] == [n for _, n in keras_order]


def test_cli_from_keras_writes_a_loadable_file(keras_files, v3_small, tmp_path, capsys):
    out_file = tmp_path / "v3.msgpack"
    rc = convert_cli.main(
        ["--from", "keras", "--model", "inception_v3", str(keras_files / "v3_150_model.h5"), str(out_file)]
    )
    assert rc == 0, capsys.readouterr().err
    model, variables = convert.load_variables(out_file)
    ours, our_variables, ref, logits, _ = v3_small
    assert model == ours  # same options: Keras' BatchNorm, pools, and the file's 10 classes
    assert_same_tree(variables, our_variables)
    loaded_logits, _ = run_ours(model, variables, ref["x"])
    np.testing.assert_array_equal(np.asarray(loaded_logits), np.asarray(logits))


def test_cli_rejects_models_keras_does_not_have(keras_files, tmp_path):
    with pytest.raises(SystemExit):
        convert_cli.main(
            [
                "--from",
                "keras",
                "--model",
                "inception_v4",
                str(keras_files / "v3_150_model.h5"),
                str(tmp_path / "x.msgpack"),
            ]
        )


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere.h5"
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        from_keras("inception_v3", path)


def test_unsupported_model_name_lists_the_supported_ones(keras_files):
    with pytest.raises(ValueError, match="inception_v3, inception_resnet_v2"):
        from_keras("inception_v4", keras_files / "v3_150_model.h5")


def test_inception_v3_file_for_inception_resnet_v2_is_refused(keras_files):
    with pytest.raises(WeightMismatchError) as info:
        from_keras("inception_resnet_v2", keras_files / "v3_150_model.h5")
    message = str(info.value)
    assert "missing from file" in message and "shape mismatch" in message
    assert "block35_1_conv" in message  # IR-v2's named layers are absent
    assert "import it as 'inception_v3'" in message


def test_truncated_file_is_refused_with_the_count(keras_files, tmp_path):
    path = tmp_path / "truncated.h5"
    shutil.copy(keras_files / "v3_150_notop.h5", path)
    with h5py.File(path, "r+") as f:
        names = keras_weights._attr_list(f, "layer_names")
        last_bn = [n for n in names if n.startswith("batch_normalization")][-1]
        f.attrs["layer_names"] = [n.encode() for n in names if n != last_bn]
        del f[last_bn]
    with pytest.raises(WeightMismatchError, match="93 BatchNorm layers.*94"):
        from_keras("inception_v3", path)


def test_keras_model_options_are_keras_semantics():
    assert keras_model_options("inception_v3") == dict(
        bn_use_scale=False, bn_momentum=0.99, bn_epsilon=1e-3, avg_pool_count_include_pad=False, dropout_rate=0.0
    )
    with pytest.raises(ValueError, match="inception_resnet_v2"):
        keras_model_options("googlenet")
