"""`inception-predict --weights FILE IMAGE... | DIR [--top-k 5] [--json | --csv]`: class predictions.

Each image goes through the evaluation preprocessing the weights file records (the trainer's eval code,
`preprocess.eval_transform`, proven equal to the publisher's in tests/test_preprocessing.py), then the
network, one compiled program for all batches; the top-k classes come with softmax probabilities and
the file's class names, ImageNet's, or `class_<i>`. Every image is decoded before anything compiles;
bad input stops with one line and exit status 2. Options and formats: docs/weights.md.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from inception_jax import kernels, preprocessing
from inception_jax.preprocessing import EvalTransform

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
DEFAULT_TOP_K = 5
DEFAULT_BATCH_SIZE = 32


class PredictInputError(ValueError):
    """Input the command cannot use; the message names it and what to do."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inception-predict", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    parser.add_argument("--weights", required=True, help="a .msgpack written by inception-convert or save_variables")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"classes per image (default {DEFAULT_TOP_K})")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")
    output.add_argument("--csv", action="store_true", help="print CSV (file,rank,index,class,probability)")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"images per forward pass ({DEFAULT_BATCH_SIZE})"
    )
    group = parser.add_argument_group("preprocessing (default: what the weights file records)")
    group.add_argument("--preprocessing", metavar="PRESET", help=f"one of {', '.join(preprocessing.PRESETS)}")
    group.add_argument("--image-size", type=int, help="input side in pixels")
    group.add_argument("--crop-pct", type=float, help="central crop fraction: resize to floor(size / crop_pct)")
    group.add_argument("--interpolation", choices=preprocessing.INTERPOLATIONS)
    group.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="in [0, 1] units")
    group.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="in [0, 1] units")
    group.add_argument("--resize", choices=preprocessing.RESIZES, help="shorter_side (keep aspect) or square")
    return parser


_OVERRIDES = ("image_size", "crop_pct", "interpolation", "mean", "std", "resize")


def resolve_transform(recorded: EvalTransform | None, args, weights: str) -> EvalTransform:
    """The file's transform, replaced by `--preprocessing` and then by the individual flags."""
    base = recorded
    if args.preprocessing:
        base = preprocessing.preset(args.preprocessing)
    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    if base is None:
        if not overrides:
            raise PredictInputError(
                f"{weights} records no preprocessing; name its publisher's with --preprocessing "
                f"(one of {', '.join(preprocessing.PRESETS)}) or give --image-size, --crop-pct, "
                "--interpolation, --mean and --std"
            )
        missing = [k for k in ("image_size", "crop_pct", "interpolation", "mean", "std") if k not in overrides]
        if missing:
            flags = ", ".join("--" + k.replace("_", "-") for k in missing)
            raise PredictInputError(f"{weights} records no preprocessing, so {flags} must be given too")
        return EvalTransform(**overrides)
    if not overrides:
        return base
    return dataclasses.replace(base, **overrides, name=None)


def list_images(inputs: Sequence[str]) -> list[str]:
    """The files to predict: named files as given, folders searched recursively (sorted)."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(item)
                for name in names
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                raise PredictInputError(f"folder {item!r} holds no images ({' '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise PredictInputError(f"image {item!r} does not exist")
    return files


def load_images(files: Sequence[str], transform: EvalTransform) -> np.ndarray:
    """uint8 (N, S, S, 3): each file decoded and transformed by the trainer's eval code."""
    import tensorflow as tf

    from inception_jax.trainer.data import preprocess

    try:  # TensorFlow only decodes here; leave the accelerators to JAX
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def load(encoded):
        return preprocess.eval_transform(preprocess.decode(encoded, 3), transform)

    images = np.zeros((len(files), transform.image_size, transform.image_size, 3), np.uint8)
    for i, path in enumerate(files):
        data = _read_image_file(path)
        try:
            images[i] = load(tf.constant(data)).numpy()
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
            raise PredictInputError(f"{path!r}: TensorFlow cannot decode this image") from None
    return images


_TF_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")  # what tf.io.decode_image reads


def _read_image_file(path: str) -> bytes:
    """The file's bytes, once PIL has decoded them in full: a file that is not an image, or a truncated
    one, fails here with a Python exception, before TensorFlow (which would print its own C++ warnings
    and libjpeg messages on stderr) sees it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PredictInputError(f"cannot read image {path!r}: {e.strerror or e}") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
            image.load()
    except UnidentifiedImageError:
        raise PredictInputError(f"{path!r} is not an image (JPEG, PNG, GIF, BMP or WebP)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise PredictInputError(f"{path!r} is not a readable image: {' '.join(str(e).split())}") from None
    if kind not in _TF_FORMATS:
        raise PredictInputError(f"{path!r} is a {kind} image; use JPEG, PNG, GIF, BMP or WebP")
    return data


def class_names_for(num_classes: int, recorded: Sequence[str] | None) -> tuple[list[str], str]:
    """(one name per output, where they come from)."""
    if recorded is not None and len(recorded) == num_classes:
        return list(recorded), "recorded in the weights file"
    if recorded is not None:
        print(
            f"warning: the weights file records {len(recorded)} class names for {num_classes} outputs; not used",
            file=sys.stderr,
        )
    imagenet = preprocessing.imagenet_class_names(num_classes)
    if imagenet is not None:
        return list(imagenet), f"ImageNet's ({num_classes}-way)"
    return [f"class_{i}" for i in range(num_classes)], "unknown: class_<index>"


def _logits(model, variables, images, mean, std):
    x = (images.astype(jnp.float32) / 255.0 - mean) / std  # the trainer's normalise_images
    with jax.default_matmul_precision("highest"):  # full float32 on GPUs too, as the publishers evaluate
        logits, _ = model.apply(variables, x, train=False)
    return logits.astype(jnp.float32)


@functools.cache
def _compiled_logits():
    """`_logits` jitted once per process (compiled per model and batch shape), with the CPU compiler
    options the trainer uses (`kernels.compiler_options`)."""
    return jax.jit(_logits, static_argnames=("model",), compiler_options=kernels.compiler_options(jax.devices()))


def predict_probabilities(model, variables, images: np.ndarray, transform: EvalTransform, batch_size: int):
    """Softmax probabilities (N, num_classes), float64, one compiled program for every batch."""
    n = len(images)
    batch = max(1, min(batch_size, n))
    variables = jax.device_put(dict(variables))
    mean = np.asarray(transform.mean, np.float32)
    std = np.asarray(transform.std, np.float32)
    out = []
    for start in range(0, n, batch):
        chunk = images[start : start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(_compiled_logits()(model, variables, chunk, mean, std), np.float64))
    logits = np.concatenate(out)[:n]
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest probabilities per row, largest first (ties: lower index first)."""
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def _rows(files, probs, names, k):
    for path, p, idx in zip(files, probs, top_k(probs, k)):
        for rank, i in enumerate(idx, start=1):
            yield path, rank, int(i), names[i], float(p[i])


def write_table(out, files, probs, names, k) -> None:
    rows = list(_rows(files, probs, names, k))
    fw = max(len("file"), *(len(r[0]) for r in rows))
    cw = max(len("class"), *(len(r[3]) for r in rows))
    out.write(f"{'file':<{fw}}  rank  {'class':<{cw}}  probability\n")
    for path, rank, _, name, p in rows:
        out.write(f"{path:<{fw}}  {rank:>4}  {name:<{cw}}  {p:>11.4f}\n")


def write_csv(out, files, probs, names, k) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "rank", "index", "class", "probability"])
    for path, rank, i, name, p in _rows(files, probs, names, k):
        writer.writerow([path, rank, i, name, repr(p)])


def write_json(out, files, probs, names, k, meta: dict) -> None:
    images = []
    for path, p, idx in zip(files, probs, top_k(probs, k)):
        predictions = [
            {"rank": r, "index": int(i), "class": names[i], "probability": float(p[i])}
            for r, i in enumerate(idx, start=1)
        ]
        images.append({"file": path, "predictions": predictions})
    json.dump(meta | {"images": images}, out, indent=2)
    out.write("\n")


def run(args) -> None:
    from inception_jax.models import registry
    from inception_jax.weights import load_weights_file

    if args.top_k < 1:
        raise PredictInputError(f"--top-k {args.top_k}: must be at least 1")
    if args.batch_size < 1:
        raise PredictInputError(f"--batch-size {args.batch_size}: must be at least 1")
    if not os.path.isfile(args.weights):
        raise PredictInputError(f"--weights {args.weights!r} does not exist; convert weights with inception-convert")
    files = list_images(args.inputs)
    try:
        weights = load_weights_file(args.weights)
    except (ValueError, OSError) as e:  # not a variables file, or one for a model we do not have
        raise PredictInputError(" ".join(str(e).split())) from None
    try:
        transform = resolve_transform(weights.preprocessing, args, args.weights)
    except ValueError as e:  # a bad flag value, an unknown preset
        raise PredictInputError(str(e)) from None
    min_size = registry.data_config(weights.name).min_input_size
    if transform.image_size < min_size:
        raise PredictInputError(
            f"image size {transform.image_size} is below {weights.name}'s minimum input of {min_size} pixels"
        )
    num_classes = int(getattr(weights.model, "num_classes", 0) or 0)
    if num_classes < 1:
        raise PredictInputError(f"{args.weights!r} has no classifier (num_classes={num_classes}): nothing to predict")
    names, names_source = class_names_for(num_classes, weights.class_names)
    images = load_images(files, transform)
    print(f"preprocessing: {transform.describe()}", file=sys.stderr)
    print(f"class names: {names_source}", file=sys.stderr)
    probs = predict_probabilities(weights.model, weights.variables, images, transform, args.batch_size)
    k = min(args.top_k, num_classes)
    if args.json:
        meta = {
            "weights": args.weights,
            "model": weights.name,
            "num_classes": num_classes,
            "preprocessing": transform.to_dict(),
        }
        write_json(sys.stdout, files, probs, names, k, meta)
    elif args.csv:
        write_csv(sys.stdout, files, probs, names, k)
    else:
        write_table(sys.stdout, files, probs, names, k)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except PredictInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
