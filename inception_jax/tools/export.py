"""`inception-export --weights FILE | --workdir RUN --format FORMAT [--with-preprocessing] OUT`: a model for serving.

Images (float32 NHWC already normalised, or uint8 with `--with-preprocessing`) to logits in eval mode, for
any batch size, traced with XLA's own operations: `stablehlo` (`jax.export`), `savedmodel` (TensorFlow,
through `jax2tf`) or `onnx` (our translator, `onnx_graph`, checked with onnxruntime before it is written).
The record goes to `OUT.json` (a SavedModel's `assets/`). `msgpack` writes a fine-tuned run as a variables
file instead, recording its options, preprocessing and class names, as `inception-convert` does. Bad input:
exit status 2; a converter that fails: exit status 1; one line, nothing written. Usage: docs/weights.md.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from inception_jax import kernels
from inception_jax.preprocessing import EvalTransform
from inception_jax.tools import model_source
from inception_jax.tools.model_source import InputError

FORMATS = ("stablehlo", "savedmodel", "onnx", "msgpack")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
DEFAULT_PLATFORMS_TEXT = ",".join(DEFAULT_PLATFORMS)
METADATA_FORMAT = "inception_jax.export.v1"
SAVEDMODEL_METADATA = os.path.join("assets", "inception_jax_export.json")
INPUT_NAME, OUTPUT_NAME = "images", "logits"
ONNX_INSTALL = "pip install onnx onnxruntime (the package's `export` extra)"


class ExportError(RuntimeError):
    """A converter that cannot export the model (exit status 1); the message says which and why."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inception-export", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("output", metavar="OUT", help="the file (stablehlo, onnx) or folder (savedmodel) to write")
    model_source.add_source_flags(parser)
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument(
        "--with-preprocessing",
        action="store_true",
        help="take uint8 images already resized and cropped to the input size; normalise them in the graph",
    )
    parser.add_argument(
        "--platforms",
        help=f"stablehlo, savedmodel: comma-separated, of {'/'.join(PLATFORMS)} (default: {DEFAULT_PLATFORMS_TEXT})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT (and OUT.json) if they exist")
    model_source.add_transform_flags(parser)
    return parser


# --- what to export -----------------------------------------------------------------------------------


def input_plan(source: model_source.Source, args) -> tuple[int, EvalTransform | None]:
    """(input side in pixels, the transform to record or build in). Without a recorded transform or
    flags, a plain export takes the model's default input size; a built-in normalisation needs one."""
    from inception_jax.models import registry

    flags = [k for k in model_source.TRANSFORM_FLAGS if getattr(args, k, None) is not None]
    plain = not args.with_preprocessing and not args.preprocessing and set(flags) <= {"image_size"}
    if source.transform is None and plain:  # nothing to record; the input size alone matters
        size = args.image_size or registry.data_config(source.name).input_size
        transform = None
    else:
        transform = model_source.resolve_transform(source.transform, args, source.described)
        size = transform.image_size
    min_size = registry.data_config(source.name).min_input_size
    if size < min_size:
        raise InputError(f"image size {size} is below {source.name}'s minimum input of {min_size} pixels")
    return size, transform


def parse_platforms(text: str | None, fmt: str) -> tuple[str, ...]:
    if text is None:
        return DEFAULT_PLATFORMS if fmt not in ("onnx", "msgpack") else ()
    if fmt in ("onnx", "msgpack"):
        raise InputError(f"--platforms applies to stablehlo and savedmodel; --format {fmt} names no platform")
    platforms = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in platforms if p not in PLATFORMS]
    if not platforms or unknown or len(set(platforms)) != len(platforms):
        raise InputError(f"--platforms {text!r}: expected distinct names from {', '.join(PLATFORMS)}")
    return platforms


def logits_function(model, mean=None, std=None):
    """`f(variables, images) -> float32 logits` in eval mode, traced with XLA's own operations; with
    `mean` and `std`, `images` are uint8 and normalised first (the trainer's `normalise_images`)."""

    def forward(variables, images):
        with kernels.use("xla"), jax.default_matmul_precision("highest"):
            if mean is not None:
                from inception_jax.trainer.train import normalise_images

                images = normalise_images(images, mean, std)
            logits, _ = model.apply(variables, images, train=False)
        return logits.astype(jnp.float32)

    return forward


# --- the three writers --------------------------------------------------------------------------------


def write_stablehlo(forward, variables, spec: jax.ShapeDtypeStruct, platforms, path: str) -> None:
    """`jax.export`'s serialized form; the variables are constants inside it."""
    exported = jax_export.export(jax.jit(functools.partial(forward, variables)), platforms=platforms)(spec)
    with open(path, "wb") as f:
        f.write(exported.serialize())


def write_savedmodel(forward, variables, spec: jax.ShapeDtypeStruct, platforms, path: str) -> None:
    """A SavedModel whose `serving_default` signature maps `images` to `{"logits": ...}`; the variables
    are `tf.Variable`s (the graph stays small), the computation one StableHLO module (jax2tf)."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    try:  # TensorFlow only stages the graph here; leave the accelerators to JAX
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass
    size = spec.shape[1]
    converted = jax2tf.convert(
        forward,
        polymorphic_shapes=[None, f"(b, {size}, {size}, 3)"],
        with_gradient=False,
        native_serialization_platforms=tuple(platforms),
    )
    module = tf.Module()
    module.variables_ = jax.tree.map(lambda a: tf.Variable(a, trainable=False), variables)
    signature = [tf.TensorSpec([None, size, size, 3], tf.as_dtype(spec.dtype), name=INPUT_NAME)]

    @tf.function(input_signature=signature, autograph=False)
    def serve(images):
        return {OUTPUT_NAME: converted(module.variables_, images)}

    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": serve})


def write_onnx(forward, variables, spec: jax.ShapeDtypeStruct, name: str, path: str) -> None:
    """An ONNX graph (`onnx_graph.OPSET`, batch dimension "b") translated from the eval-mode program,
    written only once onnxruntime runs it at two batch sizes and agrees with JAX."""
    try:
        import onnxruntime

        from inception_jax.tools import onnx_graph
    except ImportError as e:
        raise InputError(f"--format onnx needs onnx and onnxruntime ({e}); {ONNX_INSTALL}") from None
    try:
        proto = onnx_graph.translate(
            forward, variables, spec, name=name, input_name=INPUT_NAME, output_name=OUTPUT_NAME
        )
    except onnx_graph.TranslationError as e:
        raise ExportError(f"cannot translate {name} to ONNX: {_one_line(e, named=False)}") from None
    except Exception as e:  # noqa: BLE001 - a graph the checker refuses is still one line
        raise ExportError(f"cannot translate {name} to ONNX: {_one_line(e)}") from None
    data = proto.SerializeToString()
    x = _probe_batch(spec, 2)
    expected = np.asarray(jax.jit(forward)(variables, x))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # errors come back as exceptions; keep onnxruntime's own log quiet
    quiet = onnxruntime.RunOptions()
    quiet.log_severity_level = 4
    version = _version("onnxruntime")
    try:
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        got = [session.run(None, {INPUT_NAME: x[:n]}, quiet)[0] for n in (2, 1)]
    except Exception as e:  # noqa: BLE001 - any runtime failure is reported in one line
        raise ExportError(f"onnxruntime {version} cannot run the ONNX graph of {name}: {_one_line(e)}") from None
    tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
    for g, want in zip(got, (expected, expected[:1])):
        diff = float(np.abs(g - want).max()) if g.shape == want.shape else np.inf
        if not diff <= tolerance:
            raise ExportError(
                f"the ONNX graph of {name} computes other logits than JAX in onnxruntime {version} "
                f"(max |difference| {diff:.3g}, tolerance {tolerance:.3g}); not written"
            )
    with open(path, "wb") as f:
        f.write(data)


def _probe_batch(spec, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (n, *spec.shape[1:])
    if spec.dtype == jnp.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(np.float32)


def _one_line(e: BaseException, named: bool = True) -> str:
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if named else text


def _version(package: str) -> str | None:
    """The installed version (the module's own, for distributions named otherwise: tensorflow-cpu)."""
    module = sys.modules.get(package)
    if getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- writing ------------------------------------------------------------------------------------------


def metadata_path(out: str, fmt: str) -> str:
    return os.path.join(out, SAVEDMODEL_METADATA) if fmt == "savedmodel" else out + ".json"


def check_output(out: str, fmt: str, overwrite: bool) -> None:
    """Refuses an existing OUT (or OUT.json) without --overwrite, and anything --overwrite could not
    safely replace: a folder for a file format, a folder that is not a SavedModel."""
    sidecar = out + ".json" if fmt not in ("savedmodel", "msgpack") else None
    existing = [p for p in (out, sidecar) if p and os.path.lexists(p)]
    if not existing:
        return
    if not overwrite:
        raise InputError(f"{existing[0]!r} exists; choose another OUT or pass --overwrite")
    if fmt == "savedmodel":
        if not os.path.isdir(out) or not os.path.isfile(os.path.join(out, "saved_model.pb")):
            raise InputError(f"{out!r} exists and is not a SavedModel folder; --overwrite replaces only one")
    elif os.path.isdir(out) or (sidecar and os.path.isdir(sidecar)):
        raise InputError(f"{out!r} or its .json is a folder; --overwrite replaces only files")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def write_weights_file(source: model_source.Source, args) -> None:
    """OUT as a variables file (`inception_jax.load_variables`): a run's weights with its model options,
    eval preprocessing and class names, so that every tool and `init_from` take it like a converted file."""
    from inception_jax.weights import save_variables

    out = os.path.normpath(args.output)
    _, transform = input_plan(source, args)  # also checks the size against the model's minimum
    check_output(out, "msgpack", args.overwrite)
    save_variables(
        out,
        source.variables,
        model=source.name,
        options=source.options,
        preprocessing=transform,
        class_names=source.class_names,
    )
    names = f"{len(source.class_names)} class names" if source.class_names else "no class names"
    recorded = f"{transform.describe()} preprocessing" if transform else "no preprocessing"
    print(f"wrote {args.output} (msgpack): {source.name} from {source.described}; {recorded}, {names}", file=sys.stderr)


def export(source: model_source.Source, args) -> dict:
    """Writes OUT and its record; returns the record."""
    fmt, out = args.format, os.path.normpath(args.output)
    platforms = parse_platforms(args.platforms, fmt)
    size, transform = input_plan(source, args)
    check_output(out, fmt, args.overwrite)
    num_classes = int(getattr(source.model, "num_classes", 0) or 0)
    if num_classes < 1:
        raise InputError(f"{source.described} has no classifier (num_classes={num_classes}): nothing to export")
    if args.with_preprocessing:
        forward = logits_function(source.model, transform.mean, transform.std)
        dtype = jnp.uint8
    else:
        forward = logits_function(source.model)
        dtype = jnp.float32
    variables = jax.tree.map(np.asarray, dict(source.variables))
    spec = jax.ShapeDtypeStruct(jax_export.symbolic_shape(f"b, {size}, {size}, 3"), dtype)
    record = {
        "format": METADATA_FORMAT,
        "export_format": fmt,
        "model": source.name,
        "source": source.described,
        "input": {"name": INPUT_NAME, "shape": [None, size, size, 3], "dtype": np.dtype(dtype).name, "layout": "NHWC"},
        "output": {"name": OUTPUT_NAME, "shape": [None, num_classes], "dtype": "float32"},
        "preprocessing_built_in": bool(args.with_preprocessing),
        "preprocessing": transform.to_dict() if transform else None,
        "class_names": list(source.class_names) if source.class_names else None,
        "platforms": list(platforms) if platforms else None,
        "versions": {p: _version(p) for p in ("inception_jax", "jax", *_converter_packages(fmt))},
    }

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    tmp_json = f"{tmp}.json"
    try:
        if fmt == "stablehlo":
            write_stablehlo(forward, variables, spec, platforms, tmp)
        elif fmt == "savedmodel":
            write_savedmodel(forward, variables, spec, platforms, tmp)
        else:
            write_onnx(forward, variables, spec, source.name, tmp)
        target = metadata_path(tmp, fmt) if fmt == "savedmodel" else tmp_json
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        if args.overwrite:
            _remove(out)
            if fmt != "savedmodel":
                _remove(out + ".json")
        os.replace(tmp, out)
        if fmt != "savedmodel":
            os.replace(tmp_json, out + ".json")
    finally:
        _remove(tmp)
        _remove(tmp_json)
    return record


def _converter_packages(fmt: str) -> tuple[str, ...]:
    return {"savedmodel": ("tensorflow",), "onnx": ("onnx", "onnxruntime")}.get(fmt, ())


def run(args) -> None:
    if args.weights and not os.path.isfile(args.weights):
        raise InputError(f"--weights {args.weights!r} does not exist; convert weights with inception-convert")
    parse_platforms(args.platforms, args.format)
    check_output(os.path.normpath(args.output), args.format, args.overwrite)  # before anything loads
    if args.format == "onnx":
        missing = [p for p in ("onnx", "onnxruntime") if importlib.util.find_spec(p) is None]
        if missing:
            raise InputError(f"--format onnx needs {' and '.join(missing)}: {ONNX_INSTALL}")
    if args.format == "msgpack" and args.with_preprocessing:
        raise InputError("--with-preprocessing builds normalisation into a graph; a msgpack file records it instead")
    source = model_source.load(args)
    if args.format == "msgpack":
        write_weights_file(source, args)
        return
    record = export(source, args)
    pixels = "uint8, normalised in the graph" if record["preprocessing_built_in"] else "float32, normalised"
    shape = "x".join("b" if d is None else str(d) for d in record["input"]["shape"])
    print(f"wrote {args.output} ({args.format}): {source.name}, images {shape} ({pixels}) -> logits", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
