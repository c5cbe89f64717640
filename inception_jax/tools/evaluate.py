"""`inception-evaluate --weights FILE | --workdir DIR --dataset NAME|folder:PATH [--split S]`: accuracy.

Top-1, top-5, mean loss and per-class accuracy over a whole split, every example exactly once (the
trainer's eval pipeline and its padding masks), with the preprocessing the weights record (or the run's
`config.input`); `--output DIR` also writes the numbers as JSON and, up to 100 classes, a confusion
matrix PNG. One process (all its local devices). Options: docs/weights.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from inception_jax import kernels, preprocessing
from inception_jax.tools import model_source
from inception_jax.tools.model_source import InputError

MAX_CONFUSION_CLASSES = 100
DEFAULT_SPLITS = ("validation", "test")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inception-evaluate", description=__doc__.splitlines()[0].split(": ", 1)[1])
    model_source.add_source_flags(parser)
    parser.add_argument("--dataset", required=True, help="a prepared TFDS dataset, 'digits', or folder:PATH")
    parser.add_argument("--data-dir", help="TFDS data dir (default: TFDS's own)")
    parser.add_argument("--split", default=None, help="the split to evaluate (default: validation, else test)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (rounded up to the device count)")
    parser.add_argument("--output", help="folder for evaluation.json and confusion.png")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    model_source.add_transform_flags(parser)
    return parser


def _config(args, transform: preprocessing.EvalTransform, batch_size: int):
    from inception_jax.trainer.config import base_config

    c = base_config()
    c.dataset.name = args.dataset
    c.dataset.data_dir = args.data_dir
    for k, v in transform.config_fields().items():
        c.input[k] = v
    c.eval_batch_size = batch_size
    if args.split:
        c.dataset.eval_split = args.split
    else:  # the dataset's held-out split: "validation" (ImageNet, folders), else "test" (digits, CIFAR)
        from inception_jax.trainer.data import pipeline

        for split in DEFAULT_SPLITS:
            c.dataset.eval_split = split
            try:
                pipeline.dataset_info(c)
                break
            except ValueError as e:
                if "does not select a split" not in str(e):
                    raise
        else:
            raise InputError(f"{args.dataset} has none of the splits {DEFAULT_SPLITS}; name one with --split")
    return c


def _label_offset(num_outputs: int, num_classes: int, described: str, dataset: str) -> int:
    """1 for TF-slim's 1001-way classifiers (a background class at 0) on a 1000-class dataset, else 0."""
    if num_outputs == num_classes:
        return 0
    if num_outputs == num_classes + 1:
        return 1
    raise InputError(
        f"{described} has {num_outputs} outputs but {dataset} has {num_classes} classes; evaluate it on a "
        "dataset with the same classes (fine-tune it first: docs/training.md)"
    )


def _step(model, mesh, mean, std, offset: int, k: int):
    """Per example: the label's log-probability, the top-k classes (dataset indices) and validity."""
    from inception_jax.trainer import parallel, train

    def step(variables, batch):
        x = train.normalise_images(batch["image"], mean, std)
        logits, _ = model.apply(variables, x, train=False)
        logits = logits.astype(jnp.float32)[:, offset:]  # TF-slim's background class is never a label
        log_probs = jax.nn.log_softmax(logits)
        label_log_prob = jnp.take_along_axis(log_probs, batch["label"][:, None], axis=1)[:, 0]
        return {"log_prob": label_log_prob, "top": jax.lax.top_k(logits, k)[1], "mask": batch["mask"]}

    return jax.jit(
        step,
        out_shardings=parallel.replicated(mesh),
        compiler_options=kernels.compiler_options(mesh),
    )


def evaluate(source: model_source.Source, config, *, progress: bool = True) -> dict:
    """Runs the split once; returns the metrics, the per-class table and the confusion matrix."""
    from tqdm import tqdm

    from inception_jax.trainer import parallel
    from inception_jax.trainer.data import pipeline

    info = pipeline.dataset_info(config)
    num_outputs = int(getattr(source.model, "num_classes", 0) or 0)
    offset = _label_offset(num_outputs, info.num_classes, source.described, config.dataset.name)
    mesh = parallel.make_mesh(jax.local_devices())
    k = min(5, info.num_classes)
    step = _step(source.model, mesh, config.input.mean, config.input.std, offset, k)
    variables = jax.device_put(source.variables, parallel.replicated(mesh))
    batches = pipeline.make_eval_iterator(
        config, global_batch_size=config.eval_batch_size, rows=(0, config.eval_batch_size)
    )
    confusion = np.zeros((info.num_classes, info.num_classes), np.int64)
    correct5 = 0
    loss_sum = 0.0
    with kernels.use(kernels.for_platform(config.kernels, parallel.platform(mesh))):
        for batch in tqdm(batches, total=len(batches), disable=not progress, desc="evaluate", unit="batch"):
            labels = batch["label"]
            out = jax.device_get(step(variables, parallel.global_batch(batch, mesh)))
            mask = out["mask"]
            np.add.at(confusion, (labels[mask], out["top"][mask, 0]), 1)
            correct5 += int(np.sum(np.any(out["top"][mask] == labels[mask, None], axis=1)))
            loss_sum -= float(np.sum(out["log_prob"][mask], dtype=np.float64))
    count = int(confusion.sum())
    if count != info.num_eval_examples:
        raise RuntimeError(
            f"evaluated {count} examples of {info.num_eval_examples}: the split was not read exactly once"
        )
    names = list(info.label_names or source.class_names or [f"class_{i}" for i in range(info.num_classes)])
    per_class = confusion.sum(axis=1)
    return {
        "model": source.name,
        "weights": source.described,
        "dataset": config.dataset.name,
        "split": config.dataset.eval_split,
        "preprocessing": dict(config.input),
        "examples": count,
        "top1": float(np.trace(confusion) / max(count, 1)),
        "top5": correct5 / max(count, 1),
        "loss": loss_sum / max(count, 1),
        "per_class": [
            {
                "class": names[i],
                "examples": int(per_class[i]),
                "top1": float(confusion[i, i] / per_class[i]) if per_class[i] else None,
            }
            for i in range(info.num_classes)
        ],
        "class_names": names,
        "confusion": confusion,
    }


def plot_confusion(result: dict, path: str) -> None:
    """The confusion matrix, rows normalised to each true class (a PNG, no timestamps in it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = result["confusion"]
    n = len(confusion)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    side = min(3 + 0.25 * n, 24)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(n)
    ax.set_xticks(ticks, result["class_names"], rotation=90, fontsize=max(4, 10 - n // 15))
    ax.set_yticks(ticks, result["class_names"], fontsize=max(4, 10 - n // 15))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{result['model']} on {result['dataset']} {result['split']}: top-1 {result['top1']:.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def _jsonable(result: dict) -> dict:
    out = {k: v for k, v in result.items() if k != "confusion"}
    out["confusion"] = result["confusion"].tolist()
    return out


def write_table(out, result: dict) -> None:
    out.write(
        f"{result['model']} ({result['weights']}) on {result['dataset']} {result['split']}: "
        f"{result['examples']} examples\n"
        f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  loss {result['loss']:.4f}\n"
    )
    width = max(len("class"), *(len(r["class"]) for r in result["per_class"]))
    out.write(f"{'class':<{width}}  examples  top-1\n")
    for r in result["per_class"]:
        acc = "-" if r["top1"] is None else f"{r['top1']:.4f}"
        out.write(f"{r['class']:<{width}}  {r['examples']:>8}  {acc:>6}\n")


def run(args) -> dict:
    from inception_jax.trainer.data import pipeline

    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.output and os.path.isfile(args.output):
        raise InputError(f"--output {args.output!r} is a file; name a folder")
    source = model_source.load(args)
    transform = model_source.resolve_transform(source.transform, args, source.described)
    model_source.check_input_size(source, transform)
    devices = jax.local_device_count()
    batch_size = -(-args.batch_size // devices) * devices
    try:
        config = _config(args, transform, batch_size)
        result = evaluate(source, config, progress=not args.no_progress and not args.json)
    except (ValueError, FileNotFoundError, pipeline.DatasetNotPreparedError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(" ".join(str(e).split())) from None
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "evaluation.json"), "w") as f:
            json.dump(_jsonable(result), f, indent=2)
        if len(result["class_names"]) <= MAX_CONFUSION_CLASSES:
            plot_confusion(result, os.path.join(args.output, "confusion.png"))
    if args.json:
        json.dump(_jsonable(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"preprocessing: {transform.describe()}", file=sys.stderr)
        write_table(sys.stdout, result)
    return result


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
