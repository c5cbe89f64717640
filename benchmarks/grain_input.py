"""Grain against tf.data for the training input: the measurement behind docs/training.md, "Why tf.data".

Times, alternating in one process, batches of 32 Inception-cropped, flipped 299 px uint8 images from the
512 `sample_photos` JPEGs (array_record), read in the same seeded global order:
  tfdata        the trainer's `pipeline.make_train_iterator`;
  grain-tf      Grain's MapDataset over `tfds.data_source`, each example through the trainer's own
                TensorFlow augmentation (one `tf.function` call per example: the same pixels, so every
                guarantee of the trainer would hold), Grain's thread pool;
  grain-pil     the Grain-native form: PIL decode, the Inception crop by numpy, PIL bicubic resize and
                flip (other pixels than the trainer's), Grain's thread pool or two worker processes.
grain-pil has no colour distortion (torchvision's and timm's PIL ops have no stateless equivalent), so it
is compared with tfdata without it. Grain is not a dependency of the project:

    pip install grain
    python benchmarks/grain_input.py >> benchmarks/grain_input_cpu.jsonl
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import platform
import statistics
import tempfile
import time

import absl.flags
import grain
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from inception_jax.trainer.config import base_config
from inception_jax.trainer.data import pipeline, sample_photos

SIZE, BATCH, SEED = 299, 32, 0


def _config(data_dir: str, distort: bool):
    c = base_config()
    c.dataset.name = "sample_photos"
    c.dataset.data_dir = data_dir
    c.dataset.train_split = c.dataset.eval_split = "train"
    c.input.image_size = SIZE
    c.input.mean, c.input.std = (0.5,) * 3, (0.5,) * 3
    c.input.interpolation = "bicubic"
    c.input.train_augment = "inception_crop"
    c.input.color_distortion = distort
    c.seed = SEED
    return c


def tfdata(config):
    return pipeline.make_train_iterator(config, global_batch_size=BATCH, rows=(0, BATCH))


class _Order:
    """Position -> (epoch, index) in the trainer's global order: the epochs' permutations end to end."""

    def __init__(self, n: int):
        self.n, self.current = n, (-1, None)  # (epoch, its permutation), swapped as one (Grain's threads)

    def __call__(self, position: int) -> tuple[int, int]:
        epoch = position // self.n
        current_epoch, permutation = self.current
        if epoch != current_epoch:
            permutation = pipeline.epoch_permutation(self.n, SEED, epoch)
            self.current = (epoch, permutation)
        return epoch, int(permutation[position % self.n])


def _ordered(n: int):
    return grain.MapDataset.range(10**6).map(_Order(n))


def _source(config):
    return tfds.data_source(
        "sample_photos",
        split="train",
        data_dir=config.dataset.data_dir,
        decoders={"image": tfds.decode.SkipDecoding()},
    )


def grain_tf(config, threads: int):
    source = _source(config)
    scalar = lambda dtype: tf.TensorSpec([], dtype)
    signature = {"image": scalar(tf.string), "label": scalar(tf.int64), "epoch": scalar(tf.int64)}
    signature["index"] = scalar(tf.int64)
    # The trainer's per-example augmentation; private, as no public route hands it out alone.
    augment = tf.function(pipeline._train_fn(config, 3), input_signature=[signature])

    def example(item):
        epoch, index = item
        record = source[index]
        out = augment({"image": record["image"], "label": record["label"], "epoch": epoch, "index": index})
        return {"image": out["image"].numpy(), "label": out["label"].numpy()}

    ds = _ordered(len(source)).map(example).batch(BATCH, drop_remainder=True)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * BATCH)))


def _pil_example(item, source):
    """The Inception crop (8%-100% of the area, aspect 3/4-4/3, 10 tries, else the whole image), bicubic
    resize and flip in PIL and numpy, seeded by (seed, epoch, index)."""
    epoch, index = item
    record = source[index]
    rng = np.random.default_rng([SEED, epoch, index])
    image = Image.open(io.BytesIO(record["image"])).convert("RGB")
    width, height = image.size
    box = (0, 0, width, height)
    for _ in range(10):
        area = width * height * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (left, top, left + w, top + h)
            break
    out = image.resize((SIZE, SIZE), Image.Resampling.BICUBIC, box=box)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return {"image": np.asarray(out, np.uint8), "label": np.int32(record["label"])}


def grain_pil(config, threads: int, processes: int):
    source = _source(config)
    ds = _ordered(len(source)).map(functools.partial(_pil_example, source=source)).batch(BATCH, drop_remainder=True)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * BATCH))
    if processes:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=processes))
    return iter(it)


def _time(batches, steps: int) -> tuple[float, float]:
    """(img/s, images per CPU-second of this process) over `steps` batches."""
    cpu0, t0 = sum(os.times()[:2]), time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        assert batch["image"].shape == (BATCH, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
    wall, cpu = time.perf_counter() - t0, sum(os.times()[:2]) - cpu0
    return steps * BATCH / wall, (steps * BATCH / cpu) if cpu > 0 else math.nan


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="batches timed per run")
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    absl.flags.FLAGS.mark_as_parsed()  # Grain's worker processes read its absl flags
    tfds.display_progress_bar(False)
    with tempfile.TemporaryDirectory() as tmp:
        sample_photos.ensure_prepared(tmp)
        distorted, plain = _config(tmp, True), _config(tmp, False)
        threads = len(os.sched_getaffinity(0))
        makers = {
            "tfdata, colour distortion": lambda: tfdata(distorted),
            "grain-tf, colour distortion": lambda: grain_tf(distorted, threads),
            "tfdata": lambda: tfdata(plain),
            "grain-tf": lambda: grain_tf(plain, threads),
            "grain-pil, threads": lambda: grain_pil(plain, threads, 0),
            "grain-pil, 2 processes": lambda: grain_pil(plain, 1, 2),
        }
        rates: dict[str, list] = {name: [] for name in makers}
        for _ in range(args.rounds):
            for name, make in makers.items():
                batches = make()
                for _ in range(args.warmup):
                    next(batches)
                rates[name].append(_time(batches, args.steps))
                del batches
        for name, values in rates.items():
            img_s = [v[0] for v in values]
            print(
                json.dumps(
                    {
                        "pipeline": name,
                        "img_per_s": statistics.median(img_s),
                        "img_per_s_min": min(img_s),
                        "img_per_s_max": max(img_s),
                        # Of this process only: worker processes' CPU is not counted (processes rows: null).
                        "img_per_cpu_s": None if "processes" in name else statistics.median(v[1] for v in values),
                        "rounds": args.rounds,
                        "steps": args.steps,
                        "batch_size": BATCH,
                        "image_size": SIZE,
                        "threads": threads,
                        "cpu": platform.processor() or platform.machine(),
                        "date": time.strftime("%Y-%m-%d"),
                        "versions": {
                            "grain": getattr(grain, "__version__", "0.2.18"),
                            "tensorflow": tf.__version__,
                            "tensorflow_datasets": tfds.__version__,
                        },
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
