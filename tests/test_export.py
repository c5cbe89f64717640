"""`inception-export`: each format's logits equal ours, reloaded without our code, for any batch size.

Two families: Inception-v3 (width 0.25, 75 pixels) and GoogLeNet (width 0.0625, 32 pixels), seeded
random weights saved with a preprocessing and class names. Every file is exported once (module fixtures)
float32 and with the preprocessing built in (uint8 in); a subprocess that imports only JAX and NumPy runs
the StableHLO files, one that imports only TensorFlow and NumPy the SavedModels, one that imports only
onnxruntime and NumPy the ONNX files. References: `model.apply` with XLA's operations and with the default
kernels. Tolerance: 1e-4 x max(1, max |logits|). The ONNX translator is also run on every registered
variant at its smallest (`onnx_graph.translate`, checked in this process).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export as jax_export

tf = pytest.importorskip("tensorflow")

from inception_jax import create_model, data_config, kernels, preprocessing  # noqa: E402
from inception_jax.models import registry  # noqa: E402
from inception_jax.preprocessing import EvalTransform  # noqa: E402
from inception_jax.tools import export  # noqa: E402
from inception_jax.weights import save_variables  # noqa: E402

MODELS = {
    "inception_v3": {
        "options": {"width_multiplier": 0.25, "num_classes": 6},
        "transform": EvalTransform(
            75, 0.875, "bicubic", preprocessing.INCEPTION_MEAN, preprocessing.INCEPTION_STD, name="test"
        ),
        "classes": ("ant", "bee", "cat", "dog", "eel", "fox"),
    },
    "googlenet": {
        "options": {"width_multiplier": 0.0625, "num_classes": 4},
        "transform": EvalTransform(32, 1.0, "bilinear", preprocessing.IMAGENET_MEAN, preprocessing.IMAGENET_STD),
        "classes": ("north", "east", "south", "west"),
    },
}
BATCHES = (1, 3)
VARIANTS = ("float", "uint8")  # normalised float32 in, or --with-preprocessing
# StableHLO in every model x input; a SavedModel (jax2tf around the same program, several seconds
# each) once per model and per input.
CASES = [(name, "stablehlo", variant) for name in MODELS for variant in VARIANTS] + [
    ("inception_v3", "savedmodel", "uint8"),
    ("googlenet", "savedmodel", "float"),
]
SUBPROCESS_TIMEOUT = 600

# Each runs in a fresh interpreter where importing inception_jax fails: the files need none of our code.
RUN_STABLEHLO = """
import sys
sys.modules["inception_jax"] = None
import json
import numpy as np
from jax import export
out = {}
for key, path, images, batches in json.loads(sys.argv[1]):
    with open(path, "rb") as f:
        exported = export.deserialize(f.read())
    x = np.load(images)
    for b in batches:
        out[f"{key}@{b}"] = np.asarray(exported.call(x[:b]))
np.savez(sys.argv[2], **out)
"""
RUN_SAVEDMODEL = """
import sys
sys.modules["inception_jax"] = None
import json
import numpy as np
import tensorflow as tf
out = {}
for key, path, images, batches in json.loads(sys.argv[1]):
    serve = tf.saved_model.load(path).signatures["serving_default"]
    x = np.load(images)
    for b in batches:
        out[f"{key}@{b}"] = serve(images=tf.constant(x[:b]))["logits"].numpy()
np.savez(sys.argv[2], **out)
"""
RUN_ONNX = """
import sys
sys.modules["inception_jax"] = None
import json
import numpy as np
import onnxruntime
out = {}
for key, path, images, batches in json.loads(sys.argv[1]):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.load(images)
    for b in batches:
        out[f"{key}@{b}"] = session.run(None, {"images": x[:b]})[0]
np.savez(sys.argv[2], **out)
"""
HAVE_ONNX = all(importlib.util.find_spec(p) is not None for p in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="needs onnx and onnxruntime (the export extra)")


def random_variables(model, shape) -> dict:
    """Seeded He-normal weights in the shapes `model.init` gives, without compiling it."""
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return (1.0 + 0.1 * rng.random(leaf.shape)).astype(leaf.dtype)
        if name in ("bias", "mean"):
            return (0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)

    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros(shape, np.float32), train=False))
    return jax.tree_util.tree_map_with_path(fill, shapes)


def run_export(argv, capsys) -> tuple[int, str]:
    code = export.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def start(script: str, jobs: list, out: str) -> subprocess.Popen:
    return subprocess.Popen(  # in the output's folder: not the checkout's on sys.path
        [sys.executable, "-c", script, json.dumps(jobs), out],
        cwd=os.path.dirname(out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, out: str) -> dict:
    _, err = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode == 0, err[-3000:]
    with np.load(out) as data:
        return dict(data)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Per model: the module, its variables, a weights file (transform and class names recorded) and
    the test batch as uint8 pixels and normalised float32 (both also saved as .npy)."""
    root = tmp_path_factory.mktemp("export")
    models = {}
    for name, spec in MODELS.items():
        t = spec["transform"]
        model = create_model(name, **spec["options"])
        variables = random_variables(model, (1, t.image_size, t.image_size, 3))
        path = root / f"{name}.msgpack"
        save_variables(
            path, variables, model=name, options=spec["options"], preprocessing=t, class_names=spec["classes"]
        )
        pixels = np.random.default_rng(1).integers(0, 256, (max(BATCHES), t.image_size, t.image_size, 3), np.uint8)
        images = preprocessing.normalize(pixels, t.mean, t.std)
        np.save(root / f"{name}.uint8.npy", pixels)
        np.save(root / f"{name}.float.npy", images)
        models[name] = {"model": model, "variables": variables, "images": images, "weights": path}
    return {"root": root, "models": models}


@pytest.fixture(scope="module")
def references(weights):
    """Per model: `model.apply`'s logits with XLA's operations and with the default kernels."""
    return {
        name: {kind: reference_logits(m, kind) for kind in ("xla", "auto")} for name, m in weights["models"].items()
    }


def _made(weights, references):
    """Every StableHLO and SavedModel export, their logits reloaded in fresh processes, and ours."""
    root = weights["root"]
    exported, jobs = {}, {"stablehlo": [], "savedmodel": []}
    for name, fmt, variant in CASES:
        m = weights["models"][name]
        out = root / f"{name}.{variant}.{fmt}"
        argv = ["--weights", m["weights"], "--format", fmt, out]
        argv += ["--with-preprocessing"] if variant == "uint8" else []
        assert export.main([str(a) for a in argv]) == 0, f"{name} {fmt} {variant}"
        exported[name, fmt, variant] = out
        jobs[fmt].append([f"{name}.{variant}", str(out), str(root / f"{name}.{variant}.npy"), list(BATCHES)])
    scripts = {"stablehlo": RUN_STABLEHLO, "savedmodel": RUN_SAVEDMODEL}
    running = {fmt: start(scripts[fmt], jobs[fmt], str(root / f"{fmt}_logits.npz")) for fmt in jobs}
    logits = {fmt: finish(p, str(root / f"{fmt}_logits.npz")) for fmt, p in running.items()}
    return {"root": root, "models": weights["models"], "exported": exported, "refs": references, "logits": logits}


def _onnx_made(weights, references):
    """Every ONNX export and its logits, reloaded by onnxruntime in a fresh process."""
    root = weights["root"]
    exported, jobs = {}, []
    for name, m in weights["models"].items():
        for variant in VARIANTS:
            out = root / f"{name}.{variant}.onnx"
            argv = ["--weights", m["weights"], "--format", "onnx", out]
            argv += ["--with-preprocessing"] if variant == "uint8" else []
            assert export.main([str(a) for a in argv]) == 0, f"{name} onnx {variant}"
            exported[name, variant] = out
            jobs.append([f"{name}.{variant}", str(out), str(root / f"{name}.{variant}.npy"), list(BATCHES)])
    logits = finish(start(RUN_ONNX, jobs, str(root / "onnx_logits.npz")), str(root / "onnx_logits.npz"))
    return {"exported": exported, "refs": references, "logits": logits}


def reference_logits(m, kind: str) -> np.ndarray:
    """`model.apply` in eval mode with `kernels.use(kind)` ("auto": the default, CPU forms on a CPU)."""

    def apply(variables, x):
        with kernels.use(kind):
            return m["model"].apply(variables, x, train=False)[0]

    return np.asarray(jax.jit(apply)(m["variables"], m["images"]))


def tolerance(ref) -> float:
    return 1e-4 * max(1.0, float(np.abs(ref).max()))


def _check_reloaded_logits_equal_ours_at_two_batch_sizes(made, name, fmt, variant):
    refs = made["refs"][name]
    for b in BATCHES:
        got = made["logits"][fmt][f"{name}.{variant}@{b}"]
        assert got.shape == (b, MODELS[name]["options"]["num_classes"]) and got.dtype == np.float32
        for kind, ref in refs.items():
            diff = float(np.abs(got - ref[:b]).max())
            assert diff <= tolerance(ref), f"{fmt} {variant} batch {b} vs {kind} kernels: {diff:.3g}"


def _check_the_record_says_what_was_exported(made):
    for name, fmt, variant in CASES:
        spec = MODELS[name]
        out = str(made["exported"][name, fmt, variant])
        with open(export.metadata_path(out, fmt)) as f:
            record = json.load(f)
        size = spec["transform"].image_size
        assert record["model"] == name and record["export_format"] == fmt
        assert record["input"] == {
            "name": "images",
            "shape": [None, size, size, 3],
            "dtype": "uint8" if variant == "uint8" else "float32",
            "layout": "NHWC",
        }
        assert record["output"]["shape"] == [None, spec["options"]["num_classes"]]
        assert record["preprocessing_built_in"] is (variant == "uint8")
        assert EvalTransform.from_dict(record["preprocessing"]) == spec["transform"]
        assert record["class_names"] == list(spec["classes"])
        assert record["platforms"] == list(export.DEFAULT_PLATFORMS)


def _check_stablehlo_has_a_symbolic_batch_every_platform_and_no_cpu_rewrites(made):
    path = made["exported"]["inception_v3", "stablehlo", "uint8"]
    exported = jax_export.deserialize(path.read_bytes())
    (aval,) = exported.in_avals
    assert jax_export.is_symbolic_dim(aval.shape[0]) and aval.shape[1:] == (75, 75, 3) and aval.dtype == np.uint8
    assert exported.platforms == export.DEFAULT_PLATFORMS
    assert kernels.CPU_FORM_SCOPE not in exported.mlir_module()  # traced with kernels.use("xla")


def _check_savedmodel_signature_has_a_dynamic_batch(made):
    serve = tf.saved_model.load(str(made["exported"]["googlenet", "savedmodel", "float"])).signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    assert spec.shape.as_list() == [None, 32, 32, 3] and spec.dtype == tf.float32
    assert list(serve.structured_outputs) == ["logits"]


def test_a_file_without_a_transform_exports_at_the_models_input_size(weights, tmp_path, capsys):
    m = weights["models"]["googlenet"]
    bare = tmp_path / "bare.msgpack"
    save_variables(bare, m["variables"], model="googlenet", options=MODELS["googlenet"]["options"])
    code, err = run_export(["--weights", bare, "--format", "stablehlo", tmp_path / "bare.jax_exported"], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "bare.jax_exported.json").read_text())
    size = data_config("googlenet").input_size
    assert record["input"]["shape"] == [None, size, size, 3]
    assert record["preprocessing"] is None and record["class_names"] is None
    # Built-in preprocessing needs a mean and std: the file records none, so this is an error.
    code, err = run_export(
        ["--weights", bare, "--format", "stablehlo", "--with-preprocessing", tmp_path / "pre.jax_exported"], capsys
    )
    assert code == 2 and err.count("\n") == 1 and "records no preprocessing" in err
    assert not (tmp_path / "pre.jax_exported").exists()


def test_overwrite_replaces_only_what_it_should(weights, tmp_path, capsys):
    weights = weights["models"]["googlenet"]["weights"]
    out = tmp_path / "model.jax_exported"
    out.write_bytes(b"old")
    code, err = run_export(["--weights", weights, "--format", "stablehlo", out], capsys)
    assert code == 2 and err.count("\n") == 1 and "exists" in err and out.read_bytes() == b"old"
    code, err = run_export(["--weights", weights, "--format", "stablehlo", "--overwrite", out], capsys)
    assert code == 0, err
    assert out.read_bytes() != b"old" and json.loads((tmp_path / "model.jax_exported.json").read_text())["model"]
    folder = tmp_path / "not_a_savedmodel"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    code, err = run_export(["--weights", weights, "--format", "savedmodel", "--overwrite", folder], capsys)
    assert code == 2 and err.count("\n") == 1 and "not a SavedModel" in err
    assert sorted(os.listdir(folder)) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["model.jax_exported", "model.jax_exported.json", "not_a_savedmodel"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--weights", "{root}/missing.msgpack", "--format", "stablehlo"], "does not exist"),
        (["--weights", "{weights}", "--format", "stablehlo", "--image-size", "40"], "below"),
        (["--weights", "{weights}", "--format", "stablehlo", "--platforms", "cpu,gpu"], "--platforms"),
        (["--weights", "{weights}", "--format", "onnx", "--platforms", "cpu"], "--platforms"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(weights, tmp_path, capsys, extra, message):
    path = weights["models"]["inception_v3"]["weights"]
    argv = [a.format(root=tmp_path, weights=path) for a in extra] + [tmp_path / "out" / "model"]
    code, err = run_export(argv, capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert os.listdir(tmp_path) == []


def test_unknown_format_is_an_argparse_error(weights, tmp_path, capsys):
    path = weights["models"]["googlenet"]["weights"]
    with pytest.raises(SystemExit) as e:
        export.main(["--weights", str(path), "--format", "tflite", str(tmp_path / "m")])
    assert e.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_onnx_without_onnxruntime_is_one_line(weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    path = weights["models"]["googlenet"]["weights"]
    code, err = run_export(["--weights", path, "--format", "onnx", tmp_path / "m.onnx"], capsys)
    assert code == 2 and err.count("\n") == 1 and "needs onnxruntime" in err and "export" in err, err
    assert os.listdir(tmp_path) == []


def test_module_entry_point(tmp_path):
    cmd = [sys.executable, "-m", "inception_jax.tools.export", "--weights", str(tmp_path / "none.msgpack")]
    result = subprocess.run(
        cmd + ["--format", "savedmodel", str(tmp_path / "m")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2 and result.stderr.startswith("error: --weights") and result.stderr.count("\n") == 1
    assert os.listdir(tmp_path) == []


# --- ONNX ---------------------------------------------------------------------------------------------


def _check_onnx_logits_equal_ours_at_two_batch_sizes(onnx_made, name, variant):
    refs = onnx_made["refs"][name]
    for b in BATCHES:
        got = onnx_made["logits"][f"{name}.{variant}@{b}"]
        assert got.shape == (b, MODELS[name]["options"]["num_classes"]) and got.dtype == np.float32
        for kind, ref in refs.items():
            diff = float(np.abs(got - ref[:b]).max())
            assert diff <= tolerance(ref), f"onnx {variant} batch {b} vs {kind} kernels: {diff:.3g}"


def _check_onnx_graph_is_channels_first_with_a_symbolic_batch_and_its_record(onnx_made):
    import onnx

    from inception_jax.tools import onnx_graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    for (name, variant), path in onnx_made["exported"].items():
        record = json.loads(path.with_name(path.name + ".json").read_text())
        assert record["export_format"] == "onnx" and record["platforms"] is None
        assert record["preprocessing_built_in"] is (variant == "uint8")
        assert set(record["versions"]) == {"inception_jax", "jax", "onnx", "onnxruntime"}
        model = onnx.load(str(path))
        assert [(o.domain, o.version) for o in model.opset_import] == [("", onnx_graph.OPSET)]
        (images,), (logits,) = model.graph.input, model.graph.output
        size, classes = MODELS[name]["transform"].image_size, MODELS[name]["options"]["num_classes"]
        assert (images.name, dims(images), logits.name, dims(logits)) == (
            "images",
            ["b", size, size, 3],
            "logits",
            ["b", classes],
        )
        uint8 = images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        assert uint8 is (variant == "uint8")
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("Transpose") == 1 and {"Conv", "MaxPool", "MatMul"} <= set(ops)  # NCHW inside


def tiny_model(name: str, **options):
    """The variant at its smallest: a sixteenth of the widths (16 channels at least), one block per
    stage, its minimum input size (32 pixels at least); `options` on top."""
    options = {"width_multiplier": 0.0625, "num_classes": 5, **options}
    if "depths" in registry.model_options(name):
        options.setdefault("depths", (1, 1, 1))
    return create_model(name, **options), max(data_config(name).min_input_size, 32)


# Every registered variant, and the options that bring other primitives: LRN (a pad, powers, a window
# over the channels), blocks as a scan (unrolled) under remat (at a quarter width: at a sixteenth, the
# 16-channel floor makes a scanned block's output wider than its input).
TRANSLATED = [(name, {}) for name in registry.list_models()] + [
    ("googlenet", {"norm": "lrn"}),
    ("inception_v4", {"scan_blocks": True, "remat": True, "depths": (2, 1, 1), "width_multiplier": 0.25}),
]


@needs_onnx
@pytest.mark.parametrize(
    "name, options", TRANSLATED, ids=[n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in TRANSLATED]
)
def test_every_variant_translates_and_onnxruntime_agrees(name, options):
    import onnxruntime

    from inception_jax.tools import onnx_graph

    model, size = tiny_model(name, **options)
    variables = random_variables(model, (1, size, size, 3))
    forward = export.logits_function(model)
    spec = jax.ShapeDtypeStruct(jax_export.symbolic_shape(f"b, {size}, {size}, 3"), jnp.float32)
    proto = onnx_graph.translate(forward, variables, spec, name=name)
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((max(BATCHES), size, size, 3)).astype(np.float32)
    ref = np.asarray(jax.jit(forward)(variables, x))
    for b in BATCHES:
        diff = float(np.abs(session.run(None, {"images": x[:b]})[0] - ref[:b]).max())
        assert diff <= tolerance(ref), f"{name} batch {b}: {diff:.3g}"


def mixed_program(variables, x):
    """(b, 4, 6) -> (b, 21) through the translated primitives the models leave out or use only on
    constants, with batch-dependent shapes: reshapes, broadcasts of computed values and of a constant to
    the batch, slices to the end of the batch, comparisons and selects, a contraction with a batch axis,
    a scan over a computed value."""
    b = x.shape[0]
    y = jnp.einsum("bji,jk->bik", x, variables["w"])
    z = jnp.einsum("bij,bkj->bik", y, y).reshape(b, -1)
    z = jnp.where((z > 0.5) & (z != 1.0), jnp.exp(-z), jnp.log(1 + jnp.abs(z)))
    z = jnp.where(z <= 0.1, jnp.minimum(z, 0.05), z**1.5)
    g = (
        jnp.tanh(jax.lax.slice(z, (0, 1), (b, 30), (1, 2)))
        + jax.nn.sigmoid(jax.lax.slice_in_dim(z, 0, 15, axis=1)) ** 3
    )
    g = jnp.pad(g + jnp.square(jax.lax.slice_in_dim(z, 3, 18, axis=1)), ((0, 0), (1, 2)), constant_values=0.5)
    g = jnp.sqrt(jnp.abs(g) + 1) * jax.lax.rsqrt(jnp.abs(g) + 2)
    e = g[:, None, :] * variables["m"][None, :, None]
    e = jnp.squeeze(jax.lax.slice_in_dim(e, 0, 1, axis=1), 1) + jnp.zeros((b, 1))
    r = jnp.max(e, axis=1, keepdims=True) - jnp.min(e, axis=1, keepdims=True) + jnp.mean(e, axis=1, keepdims=True)

    def step(c, row):
        c = c * 0.5 + row.sum(-1)
        return c, c[:, None] * row

    c, ys = jax.lax.scan(step, jnp.zeros(b), jnp.swapaxes(x, 0, 1))
    tail = jax.lax.slice_in_dim(jnp.swapaxes(ys, 0, 1).reshape(b, -1), 2, 5, axis=1) + c[:, None]
    return jnp.concatenate([e * r, tail], axis=1)


@needs_onnx
def test_the_other_translated_primitives_agree_at_two_batch_sizes():
    import onnxruntime

    from inception_jax.tools import onnx_graph

    rng = np.random.default_rng(3)
    variables = {"w": rng.standard_normal((4, 5)).astype(np.float32), "m": np.arange(1, 4, dtype=np.float32)}
    spec = jax.ShapeDtypeStruct(jax_export.symbolic_shape("b, 4, 6"), jnp.float32)
    proto = onnx_graph.translate(mixed_program, variables, spec)
    ops = {n.op_type for n in proto.graph.node}
    assert {"Einsum", "Where", "Slice", "Pad", "Expand", "Gather", "Squeeze", "ReduceMax", "Pow"} <= ops
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((max(BATCHES), 4, 6)).astype(np.float32)
    ref = np.asarray(jax.jit(mixed_program)(variables, x))
    for b in BATCHES:
        got = session.run(None, {"images": x[:b]})[0]
        assert got.shape == (b, 21) and float(np.abs(got - ref[:b]).max()) <= tolerance(ref)


@needs_onnx
def test_an_untranslatable_program_is_one_line_exit_1_and_nothing_written(weights, tmp_path, capsys, monkeypatch):
    from inception_jax.tools import onnx_graph

    plain = export.logits_function

    def with_cumsum(model, mean=None, std=None):
        forward = plain(model, mean, std)
        return lambda variables, images: jnp.cumsum(forward(variables, images), axis=1)

    monkeypatch.setattr(export, "logits_function", with_cumsum)
    path = weights["models"]["googlenet"]["weights"]
    code, err = run_export(["--weights", path, "--format", "onnx", tmp_path / "m.onnx"], capsys)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "googlenet" in err and "'cumsum' has no ONNX translation" in err
    assert os.listdir(tmp_path) == []
    # A program computing in another dtype than the ones ONNX export translates: named too.
    spec = jax.ShapeDtypeStruct(jax_export.symbolic_shape("b, 4"), jnp.float32)
    with pytest.raises(onnx_graph.TranslationError, match="computes in bfloat16"):
        onnx_graph.translate(lambda v, x: (x.astype(jnp.bfloat16) * 2).astype(jnp.float32) + v, np.float32(1), spec)


@pytest.mark.slow  # every export above and three reloading processes: about a minute
def test_every_export_reloads_without_this_package_and_gives_our_logits(weights, references):
    """The checks that share the exports, in one test: under xdist's work stealing a module fixture runs
    again on each worker that takes one of its tests."""
    made = _made(weights, references)
    for case in CASES:
        _check_reloaded_logits_equal_ours_at_two_batch_sizes(made, *case)
    _check_the_record_says_what_was_exported(made)
    _check_stablehlo_has_a_symbolic_batch_every_platform_and_no_cpu_rewrites(made)
    _check_savedmodel_signature_has_a_dynamic_batch(made)
    if not HAVE_ONNX:
        pytest.skip("ONNX: needs onnx and onnxruntime (the export extra)")
    onnx_made = _onnx_made(weights, references)
    for name in MODELS:
        for variant in VARIANTS:
            _check_onnx_logits_equal_ours_at_two_batch_sizes(onnx_made, name, variant)
    _check_onnx_graph_is_channels_first_with_a_symbolic_batch_and_its_record(onnx_made)
