"""`inception-predict --weights FILE | --workdir RUN IMAGE... | DIR [--top-k 5] [--json|--csv]`: predictions.

Each image goes through the evaluation preprocessing the weights file records (the trainer's eval code,
`preprocess.eval_transform`, proven equal to the publisher's in tests/test_preprocessing.py), then the
network, one compiled program for all batches; the top-k classes come with softmax probabilities and
the file's class names, ImageNet's, or `class_<i>`. Every image is decoded before anything compiles;
bad input stops with one line and exit status 2. Options and formats: docs/weights.md.
"""

from __future__ import annotations

import argparse
import csv
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
from inception_jax.tools import model_source
from inception_jax.tools.model_source import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
DEFAULT_TOP_K = 5
DEFAULT_BATCH_SIZE = 32


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inception-predict", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    model_source.add_source_flags(parser)
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"classes per image (default {DEFAULT_TOP_K})")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")
    output.add_argument("--csv", action="store_true", help="print CSV (file,rank,index,class,probability)")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"images per forward pass ({DEFAULT_BATCH_SIZE})"
    )
    model_source.add_transform_flags(parser)
    return parser


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
                raise InputError(f"folder {item!r} holds no images ({' '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise InputError(f"image {item!r} does not exist")
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
            raise InputError(f"{path!r}: TensorFlow cannot decode this image") from None
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
        raise InputError(f"cannot read image {path!r}: {e.strerror or e}") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
            image.load()
    except UnidentifiedImageError:
        raise InputError(f"{path!r} is not an image (JPEG, PNG, GIF, BMP or WebP)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"{path!r} is not a readable image: {' '.join(str(e).split())}") from None
    if kind not in _TF_FORMATS:
        raise InputError(f"{path!r} is a {kind} image; use JPEG, PNG, GIF, BMP or WebP")
    return data


def class_names_for(num_classes: int, recorded: Sequence[str] | None) -> tuple[list[str], str]:
    """(one name per output, where they come from)."""
    if recorded is not None and len(recorded) == num_classes:
        return list(recorded), "recorded with the weights"
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
    if args.top_k < 1:
        raise InputError(f"--top-k {args.top_k}: must be at least 1")
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.weights and not os.path.isfile(args.weights):
        raise InputError(f"--weights {args.weights!r} does not exist; convert weights with inception-convert")
    files = list_images(args.inputs)
    source = model_source.load(args)
    transform = model_source.resolve_transform(source.transform, args, source.described)
    model_source.check_input_size(source, transform)
    num_classes = int(getattr(source.model, "num_classes", 0) or 0)
    if num_classes < 1:
        raise InputError(f"{source.described} has no classifier (num_classes={num_classes}): nothing to predict")
    names, names_source = class_names_for(num_classes, source.class_names)
    images = load_images(files, transform)
    print(f"preprocessing: {transform.describe()}", file=sys.stderr)
    print(f"class names: {names_source}", file=sys.stderr)
    probs = predict_probabilities(source.model, source.variables, images, transform, args.batch_size)
    k = min(args.top_k, num_classes)
    if args.json:
        meta = {
            "weights": source.described,
            "model": source.name,
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
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
