"""Speed of a variant's train step, inference pass or training input, beside its PyTorch reference.

    inception-bench --model inception_v3 [--mode train|infer|input] [--compare timm] [--json]

It times the trainer's own jitted step on random data already on the devices (or, with `--mode input`,
the trainer's input pipeline), with the reference's steps alternating with ours in this process, so a
noisy shared machine slows both alike. A measurement tool, not a test: what it reports and how to read
it are in docs/performance.md and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

# Reference constructors: (library, our registry name) -> builder(num_classes, aux_logits).
REFERENCES: dict[str, dict[str, Callable[..., Any]]] = {
    "timm": {
        "inception_v3": lambda timm, tv, n, aux: timm.create_model("inception_v3", num_classes=n, aux_logits=aux),
        "inception_v4": lambda timm, tv, n, aux: timm.create_model("inception_v4", num_classes=n),
        "inception_resnet_v2": lambda timm, tv, n, aux: timm.create_model("inception_resnet_v2", num_classes=n),
    },
    "torchvision": {
        "googlenet": lambda timm, tv, n, aux: tv.models.googlenet(
            weights=None, num_classes=n, aux_logits=aux, init_weights=True, transform_input=False
        ),
        "inception_v3": lambda timm, tv, n, aux: tv.models.inception_v3(
            weights=None, num_classes=n, aux_logits=aux, init_weights=True, transform_input=False
        ),
    },
}

# Dense datasheet peaks in FLOP/s (float32 without TF32, bfloat16 tensor cores) for GPUs users run on.
GPU_PEAK_FLOPS = {
    "H200": {"float32": 67e12, "bfloat16": 989e12},
    "H100": {"float32": 67e12, "bfloat16": 989e12},  # SXM; the PCIe card is lower
    "A100": {"float32": 19.5e12, "bfloat16": 312e12},
    "RTX 3090": {"float32": 35.6e12, "bfloat16": 71e12},
    "L4": {"float32": 30.3e12, "bfloat16": 121e12},
}

LEARNING_RATE = 0.045  # the Rethinking recipe's; any value times the same

# Options of one side only: the input pipeline's are errors elsewhere; the model step's are ignored (with a
# note) by --mode input, so scripts can pass one set of options to every mode.
INPUT_OPTIONS = ("dataset", "data_dir", "split", "no_color_distortion", "sample_examples")
MODEL_STEP_OPTIONS = (
    "dtype",
    "devices",
    "num_classes",
    "model_option",
    "ref_compile",
    "ref_channels_last",
    "peak_tflops",
    "xla_cpu_convolutions",
    "kernels",
    "jit",
)
# Result fields with no meaning for an input-pipeline row: null there, so every row has the same keys.
MODEL_STEP_FIELDS = (
    "model_options",
    "device",
    "xla_cpu_convolutions",
    "kernels",
    "jit",
    "compile_s",
    "compile_cached_s",
    "compile_cache_hit",
    "peak_mem_bytes",
    "xla_temp_bytes",
    "gflops_per_image",
    "achieved_tflop_per_s",
    "peak_tflop_per_s",
    "peak_source",
    "utilisation",
    "reference",
    "ref_img_per_s",
    "ref_img_per_s_min",
    "ref_img_per_s_max",
    "ref_peak_mem_bytes",
    "ratio",
)


class BenchError(ValueError):
    """A bad command line: the message names the option, the value and the fix."""


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inception-bench", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--model", help="a registered variant, e.g. inception_v3")
    p.add_argument(
        "--mode",
        choices=("train", "infer", "input"),
        default="train",
        help="the train step, the inference forward pass, or the training input pipeline",
    )
    p.add_argument("--batch-size", type=int, default=8, help="global batch over all devices used (default 8)")
    p.add_argument("--image-size", type=int, default=None, help="default: the variant's input size")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype; the reference runs under torch.autocast for bfloat16",
    )
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling (default 2)")
    p.add_argument(
        "--compare",
        choices=sorted(REFERENCES),
        default=None,
        help="run the reference PyTorch model in the same process, alternating with ours",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for both sides (pins this process to that many cores; default: all)",
    )
    p.add_argument("--devices", type=int, default=None, help="devices to use (default: all local devices)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any model option, e.g. width_multiplier=0.25 (repeatable; changes only our side)",
    )
    p.add_argument("--ref-compile", action="store_true", help="torch.compile the reference step")
    p.add_argument("--ref-channels-last", action="store_true", help="channels-last memory format for the reference")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for the utilisation figure")
    p.add_argument(
        "--xla-cpu-convolutions",
        choices=("eigen", "ynnpack"),
        default="eigen",
        help="on a CPU: XLA's own convolutions (our default) or its YNNPACK library (XLA's default); "
        "see inception_jax/kernels.py",
    )
    p.add_argument(
        "--kernels",
        choices=("auto", "xla", "cpu"),
        default="auto",
        help="backend-specific forms (inception_jax/kernels.py): 'auto' takes the CPU forms on a CPU",
    )
    p.add_argument(
        "--jit",
        choices=("project", "plain"),
        default="project",
        help="'project': the trainer's step (its compiler options, kernels resolved for the devices); "
        "'plain': the step a notebook writes, a bare jax.jit of value_and_grad and an optax update",
    )
    p.add_argument(
        "--dataset",
        help="--mode input: a prepared TFDS dataset, e.g. imagenet2012, or a folder of images, folder:DIR "
        "(default: the built-in sample_photos, built into a temporary directory)",
    )
    p.add_argument("--data-dir", help="--mode input: the TFDS data dir holding --dataset (default: TFDS's)")
    p.add_argument("--split", default="train", help="--mode input: the split read (default train)")
    p.add_argument(
        "--no-color-distortion",
        action="store_true",
        help="--mode input: leave out the Inception colour distortion (the ImageNet recipe applies it)",
    )
    p.add_argument("--sample-examples", type=int, default=None, help=argparse.SUPPRESS)  # tests: a smaller set
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--table",
        metavar="JSONL",
        help="print a markdown table of the --json results in this file "
        "(one object per line; what BENCHMARKS.md shows) and exit",
    )
    return p


def parse_model_options(items: list[str]) -> dict[str, Any]:
    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise BenchError(f"--model-option {item!r} is not KEY=VALUE; e.g. --model-option width_multiplier=0.25")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text  # a bare word, e.g. padding_mode=tf
    return options


def check_args(args, registry) -> dict[str, Any]:
    """Every cheap check, before anything is built; returns the model options."""
    if not args.model:
        raise BenchError("--model is required; e.g. --model inception_v3")
    if args.model not in registry.list_models():
        raise BenchError(
            f"--model {args.model!r} is not a registered variant; choose one of {', '.join(registry.list_models())}"
        )
    for name in ("batch_size", "steps", "num_classes"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise BenchError(f"--warmup must be at least 0, got {args.warmup}")
    if args.threads is not None and not 1 <= args.threads <= len(os.sched_getaffinity(0)):
        raise BenchError(f"--threads {args.threads}: this process may use 1 to {len(os.sched_getaffinity(0))} cores")
    if args.mode == "input":
        if args.compare:
            raise BenchError(
                f"--compare {args.compare} does not apply to --mode input, which times our input "
                "pipeline alone; drop --compare"
            )
        if args.data_dir and not args.dataset:
            raise BenchError(
                f"--data-dir {args.data_dir} needs --dataset NAME, e.g. --dataset imagenet2012 "
                "(without both, the built-in sample_photos set is timed)"
            )
        if args.sample_examples is not None and (args.dataset or args.sample_examples < 1):
            raise BenchError("--sample-examples takes a positive count, for the built-in set only")
    else:
        misplaced = _options_given(args, INPUT_OPTIONS)
        if misplaced:
            raise BenchError(f"{misplaced[0]} applies to --mode input only")
    if args.compare and args.model not in REFERENCES[args.compare]:
        have = ", ".join(f"{lib}: {', '.join(sorted(m))}" for lib, m in REFERENCES.items())
        raise BenchError(
            f"--compare {args.compare} has no reference for {args.model!r} (references: {have}); "
            "drop --compare to time ours alone"
        )
    options = parse_model_options(args.model_option)
    known = registry.model_options(args.model)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise BenchError(
            f"--model-option {unknown[0]!r} is not an option of {args.model}; valid: {', '.join(sorted(known))}"
        )
    if "num_classes" in options or "dtype" in options:
        raise BenchError("set the class count and dtype with --num-classes and --dtype, not --model-option")
    return options


# ------------------------------------------------------------------------------------------------
# Our side
# ------------------------------------------------------------------------------------------------


def _bench_config(args, options):
    from inception_jax.trainer.config import base_config

    c = base_config()
    c.model.name = args.model
    for key, value in {"aux_logits": False, **options}.items():
        c.model[key] = value
    c.batch_size = args.batch_size
    c.total_steps = 1_000_000
    c.optimizer.name = "rmsprop"
    c.optimizer.rms_decay, c.optimizer.momentum, c.optimizer.eps = 0.9, 0.9, 1.0
    c.optimizer.weight_decay = 0.0
    c.schedule.name = "constant"
    c.schedule.base_learning_rate = LEARNING_RATE
    c.label_smoothing = 0.1
    c.xla_cpu_convolutions = args.xla_cpu_convolutions
    c.kernels = args.kernels
    return c


def _ours(args, options, mesh):
    """Builds our step; returns (step(), compile_s, cached_compile_s, cache_hit, gflops_per_image,
    xla_temp_bytes): the last is XLA's own plan for the step's temporary buffers (activations kept for the
    backward pass included), a deterministic memory figure beside the noisy peak RSS."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from inception_jax import kernels, optim
    from inception_jax.models import profile
    from inception_jax.trainer import compilation, parallel, train

    config = _bench_config(args, options)
    if args.dtype == "bfloat16":
        config.model.dtype = jnp.bfloat16
    model = train.build_model(config, args.num_classes)
    config.aux_loss_weights = (0.3,) * profile.num_aux_heads(model, args.image_size)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch_size, args.image_size, args.image_size, 3), np.float32)
    labels = rng.integers(0, args.num_classes, args.batch_size).astype(np.int32)
    batch = parallel.global_batch({"image": images, "label": labels}, mesh)
    replicated = parallel.replicated(mesh)

    tx, schedule = optim.make_optimizer(config, steps_per_epoch=1000, total_steps=config.total_steps)
    init = jax.jit(lambda key: train.init_state(model, tx, config, args.image_size, key), out_shardings=replicated)
    state = init(jax.random.key(0))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    macs = profile.count_macs(model, variables, args.image_size)
    gflops_per_image = 2 * macs * (3 if args.mode == "train" else 1) / 1e9

    if args.jit == "plain":
        jitted, call_args = _plain_jit(args, model.clone(kernels=args.kernels), tx, state, batch, replicated)
    elif args.mode == "train":
        jitted = train.make_train_step(model, tx, schedule, config, args.num_classes, mesh)
        call_args = (state, batch, jax.random.key(1))
    else:
        forward = train.kernel_scope(lambda v, x: model.apply(v, x, train=False)[0], config, mesh)
        jitted = jax.jit(
            forward,
            out_shardings=replicated,
            compiler_options=kernels.compiler_options(mesh, args.xla_cpu_convolutions),
        )
        call_args = (variables, batch["image"])

    _, compile_s, _ = compilation.compile_timed(jitted, *call_args)
    jax.clear_caches()  # forget the in-memory executable: the next compile reads the persistent cache
    compiled, cached_s, cache_hit = compilation.compile_timed(jitted, *call_args)

    if args.mode == "train":
        holder = {"state": call_args[0]}

        def step():
            holder["state"], metrics = compiled(holder["state"], batch, call_args[2])
            jax.block_until_ready(metrics["train/loss"])
    else:

        def step():
            jax.block_until_ready(compiled(variables, batch["image"]))

    memory = compiled.memory_analysis()
    temp_bytes = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
    return step, compile_s, cached_s, cache_hit, gflops_per_image, temp_bytes


def _plain_jit(args, model, tx, state, batch, replicated):
    """What a notebook writes: `jax.jit` of the model with no compiler options and no kernel scope (the
    model's `kernels` field decides); the train step is value_and_grad of a label-smoothed loss and an
    optax update, returning the state and the loss like the trainer's step."""
    import jax
    import optax

    if args.mode == "infer":
        forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[0], out_shardings=replicated)
        return forward, ({"params": state.params, "batch_stats": state.batch_stats}, batch["image"])

    def step(state, batch, key):
        def loss_fn(params):
            (logits, _), new_vars = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": key},
            )
            targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], logits.shape[-1]), 0.1)
            return optax.softmax_cross_entropy(logits, targets).mean(), new_vars["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            params=optax.apply_updates(state.params, updates), batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, {"train/loss": loss}

    return jax.jit(step, donate_argnums=(0,)), (state, batch, jax.random.key(1))


# ------------------------------------------------------------------------------------------------
# The reference
# ------------------------------------------------------------------------------------------------


def _reference(args, options, on_gpu: bool):
    """Builds the PyTorch reference step; returns (step(), peak_memory() or None, versions)."""
    import timm
    import torch
    import torchvision

    torch.manual_seed(0)
    device = torch.device("cuda" if on_gpu and torch.cuda.is_available() else "cpu")
    aux = bool(options.get("aux_logits", False))
    model = REFERENCES[args.compare][args.model](timm, torchvision, args.num_classes, aux).to(device)
    memory_format = torch.channels_last if args.ref_channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def logits_of(out):
        return out.logits if hasattr(out, "logits") else out

    if args.mode == "train":
        model.train()
        # torch adds eps outside the square root, TF1 (ours) inside: the same work per step.
        opt = torch.optim.RMSprop(model.parameters(), lr=LEARNING_RATE, alpha=0.9, eps=1.0, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

        def train_step():
            opt.zero_grad(set_to_none=True)
            with autocast:
                out = model(x)
                loss = loss_fn(logits_of(out), y)
                if aux and getattr(out, "aux_logits", None) is not None:
                    loss = loss + 0.3 * loss_fn(out.aux_logits, y)
            loss.backward()
            opt.step()

        step_fn = torch.compile(train_step) if args.ref_compile else train_step

        def step():
            step_fn()
            sync()
    else:
        model.eval()
        forward = torch.compile(model) if args.ref_compile else model

        def step():
            with torch.inference_mode(), autocast:
                forward(x)
            sync()

    peak = (lambda: torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    versions = {"torch": torch.__version__, "timm": timm.__version__, "torchvision": torchvision.__version__}
    return step, peak, versions


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------


def _time(step, batch_size: int) -> float:
    start = time.perf_counter()
    step()
    return batch_size / (time.perf_counter() - start)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def device_peak_flops(device, dtype: str, override_tflops: float | None) -> tuple[float, str]:
    """The device's peak FLOP/s and where the figure comes from."""
    import jax
    import jax.numpy as jnp

    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    kind = getattr(device, "device_kind", "")
    for name, peaks in GPU_PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peaks[dtype], f"datasheet ({name}, dense {dtype})"
    n = 8192 if device.platform == "gpu" else 2048
    a = jax.device_put(jnp.ones((n, n), getattr(jnp, dtype)), device)
    matmul = jax.jit(lambda a: a @ a)
    jax.block_until_ready(matmul(a))
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        seconds.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(seconds), f"measured: jitted {n}x{n} {dtype} matmul"


def run(args) -> dict[str, Any]:
    """Measures and returns the result object that `--json` prints."""
    from inception_jax.models import registry

    options = check_args(args, registry)
    if args.threads is not None:  # before JAX and TensorFlow start their thread pools, sized to this set
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    threads = args.threads or len(os.sched_getaffinity(0))
    data = registry.data_config(args.model)
    args.image_size = args.image_size or data.input_size
    if args.mode == "input":
        if args.image_size < 1:
            raise BenchError(f"--image-size must be at least 1, got {args.image_size}")
        return _measure_input(args, data, threads)
    import jax

    from inception_jax.trainer import compilation

    if args.image_size < data.min_input_size:
        raise BenchError(f"--image-size {args.image_size} is below {args.model}'s minimum {data.min_input_size}")
    devices = jax.local_devices()
    if args.devices is not None:
        if not 1 <= args.devices <= len(devices):
            raise BenchError(f"--devices {args.devices}: this machine has {len(devices)} local devices")
        devices = devices[: args.devices]
    if args.batch_size % len(devices):
        raise BenchError(
            f"--batch-size {args.batch_size} does not split over {len(devices)} devices; "
            f"use a multiple of {len(devices)} or --devices"
        )
    on_gpu = devices[0].platform == "gpu"

    # An empty persistent cache makes the first compile cold; the second then reads it back.
    with tempfile.TemporaryDirectory(prefix="inception_jax_bench_cache_") as cache_dir:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        compilation.configure_cache(True, cache_dir)
        return _measure(args, options, devices, threads, on_gpu)


def _measure(args, options, devices, threads: int, on_gpu: bool) -> dict[str, Any]:
    import jax

    from inception_jax.trainer import parallel

    step, compile_s, cached_s, cache_hit, gflops, temp_bytes = _ours(args, options, parallel.make_mesh(devices))
    for _ in range(args.warmup):
        step()
    if on_gpu:
        stats = devices[0].memory_stats() or {}
        peak_mem = stats.get("peak_bytes_in_use")
    else:
        peak_mem = _peak_rss_bytes()

    ref_step = ref_peak = None
    versions = {"jax": jax.__version__, "python": platform.python_version()}
    if args.compare:
        import torch

        torch.set_num_threads(threads)
        ref_step, ref_peak, ref_versions = _reference(args, options, on_gpu)
        versions.update(ref_versions)
        for _ in range(args.warmup):
            ref_step()

    ours, theirs = [], []  # images/s of each timed step
    for _ in range(args.steps):  # alternate, so drifts of a shared machine hit both sides alike
        ours.append(_time(step, args.batch_size))
        if ref_step is not None:
            theirs.append(_time(ref_step, args.batch_size))

    peak_flops, peak_source = device_peak_flops(devices[0], args.dtype, args.peak_tflops)
    peak_flops *= len(devices)
    median = statistics.median(ours)
    achieved = gflops * 1e9 * median
    result = {
        "model": args.model,
        "mode": args.mode,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "dtype": args.dtype,
        "model_options": options,
        "device": f"{len(devices)} x {devices[0].device_kind}",
        "platform": devices[0].platform,
        "xla_cpu_convolutions": args.xla_cpu_convolutions if devices[0].platform == "cpu" else None,
        "kernels": args.kernels,
        "jit": args.jit,
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "steps": args.steps,
        "img_per_s": median,
        "img_per_s_min": min(ours),
        "img_per_s_max": max(ours),
        "compile_s": compile_s,
        "compile_cached_s": cached_s,
        "compile_cache_hit": cache_hit,
        "peak_mem_bytes": peak_mem,
        "xla_temp_bytes": temp_bytes,
        "gflops_per_image": gflops,
        "achieved_tflop_per_s": achieved / 1e12,
        "peak_tflop_per_s": peak_flops / 1e12,
        "peak_source": peak_source,
        "utilisation": achieved / peak_flops,
        "reference": None,
        "ref_img_per_s": None,
        "ref_img_per_s_min": None,
        "ref_img_per_s_max": None,
        "ref_peak_mem_bytes": None,
        "ratio": None,
        "versions": versions,
    }
    if ref_step is not None:
        result.update(
            {
                "reference": f"{args.compare} {args.model}"
                + (" compiled" if args.ref_compile else "")
                + (" channels-last" if args.ref_channels_last else ""),
                "ref_img_per_s": statistics.median(theirs),
                "ref_img_per_s_min": min(theirs),
                "ref_img_per_s_max": max(theirs),
                "ref_peak_mem_bytes": ref_peak() if ref_peak else None,
                "ratio": median / statistics.median(theirs),
            }
        )
    return result


# ------------------------------------------------------------------------------------------------
# The input pipeline
# ------------------------------------------------------------------------------------------------


def _input_config(args, data, data_dir):
    """The trainer's config for this dataset: the variant's input defaults (as `validation` fills them),
    the ImageNet recipe's augmentation. mean/std only satisfy the pipeline's check: batches stay uint8."""
    from inception_jax.trainer.config import base_config

    c = base_config()
    c.model.name = args.model
    c.batch_size = args.batch_size
    c.dataset.name = args.dataset or "sample_photos"
    c.dataset.data_dir = data_dir
    c.dataset.train_split = c.dataset.eval_split = args.split  # dataset_info checks both; only train is read
    for key in ("crop_pct", "mean", "std", "interpolation"):
        c.input[key] = getattr(data, key)
    c.input.image_size = args.image_size
    c.input.train_augment = "inception_crop"
    c.input.color_distortion = not args.no_color_distortion
    return c


def _dataset_info(config, args):
    """`pipeline.dataset_info`, which reads only metadata: a missing dataset fails here, before any work."""
    from inception_jax.trainer.data import pipeline

    try:
        return pipeline.dataset_info(config)
    except pipeline.DatasetNotPreparedError as e:
        build = next((line.strip() for line in str(e).splitlines() if line.strip().startswith("tfds build")), "")
        where = args.data_dir or "(TFDS's default)"
        raise BenchError(
            f"--dataset {args.dataset} is not prepared in --data-dir {where}; prepare it once"
            f" with `{build}` (see inception_jax/trainer/data/pipeline.py), or drop --dataset "
            "and --data-dir to time the built-in sample_photos set"
        ) from None
    except ValueError as e:  # an unknown name or split; the pipeline's message names the config fields
        name = args.dataset or "sample_photos"
        raise BenchError(f"--dataset {name} --split {args.split}: {str(e).splitlines()[0]}") from None


def _mean_jpeg_bytes(config) -> float | None:
    """Stored bytes per example of a JPEG split, from TFDS's metadata (the JPEG plus ~40 bytes of label
    and framing); None for other encodings or when the split's size is not recorded."""
    import tensorflow_datasets as tfds

    from inception_jax.trainer.data import folder

    if folder.is_folder(config.dataset.name):
        return None  # files of any format, sizes not recorded
    builder = tfds.builder(config.dataset.name, data_dir=config.dataset.data_dir, try_gcs=False)
    if getattr(builder.info.features["image"], "encoding_format", None) != "jpeg":
        return None
    try:
        split = builder.info.splits[config.dataset.train_split]
        return split.num_bytes / split.num_examples
    except Exception:  # noqa: BLE001 -- an unusual split string: the figure is only informative
        return None


def _options_given(args, names) -> list[str]:
    """The flags among `names` (argparse dests) that differ from their defaults, as `--flag-name`s."""
    defaults = _parser()
    return [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) != defaults.get_default(n)]


def _measure_input(args, data, threads: int) -> dict[str, Any]:
    """Times `pipeline.make_train_iterator` as the trainer calls it with one process: all rows of the batch."""
    ignored = _options_given(args, MODEL_STEP_OPTIONS)
    if ignored:
        print(f"note: --mode input ignores {', '.join(ignored)} (options of the model step)", file=sys.stderr)
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from inception_jax.trainer.data import pipeline, sample_photos

    tfds.display_progress_bar(False)
    with tempfile.TemporaryDirectory(prefix="inception_jax_bench_data_") as tmp:
        if args.dataset:
            config = _input_config(args, data, args.data_dir)
        else:
            with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its progress; stdout is for the result
                sample_photos.ensure_prepared(tmp, num_train=args.sample_examples or sample_photos.NUM_TRAIN)
            config = _input_config(args, data, tmp)
        info = _dataset_info(config, args)
        mean_bytes = _mean_jpeg_bytes(config)
        batches = pipeline.make_train_iterator(config, global_batch_size=args.batch_size, rows=(0, args.batch_size))
        step = batches.__next__
        for _ in range(args.warmup):  # tf.data's autotuning settles its parallelism and buffers
            step()
        cpu_start = sum(os.times()[:2])  # user + system seconds of all our threads
        rates = [_time(step, args.batch_size) for _ in range(args.steps)]
        cpu_s = sum(os.times()[:2]) - cpu_start
        del batches  # stops tf.data's threads before their files go
    return {
        **dict.fromkeys(MODEL_STEP_FIELDS),
        "model": args.model,
        "mode": args.mode,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "dtype": "uint8",
        "platform": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "steps": args.steps,
        "img_per_s": statistics.median(rates),
        "img_per_s_min": min(rates),
        "img_per_s_max": max(rates),
        "dataset": info.name,
        "split": args.split,
        "num_examples": info.num_train_examples,
        "mean_jpeg_bytes": mean_bytes,
        # Images per CPU-second: the cores a rate needs, which a busy shared machine distorts less than img/s.
        "img_per_cpu_s": args.steps * args.batch_size / cpu_s if cpu_s > 0 else None,
        "color_distortion": config.input.color_distortion,
        "interpolation": config.input.interpolation,
        "versions": {
            "tensorflow": tf.__version__,
            "tensorflow_datasets": tfds.__version__,
            "python": platform.python_version(),
        },
    }


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def _input_label(r: dict[str, Any]) -> str:
    """What an input row read and did, e.g. `sample_photos train, colour distortion`."""
    distortion = "colour distortion" if r.get("color_distortion") else "no colour distortion"
    return f"{r.get('dataset')} {r.get('split', 'train')}, {distortion}"


def format_table(r: dict[str, Any]) -> str:
    if r["mode"] == "input":
        size = "" if r.get("mean_jpeg_bytes") is None else f", mean {r['mean_jpeg_bytes'] / 1e3:.0f} KB"
        per_core = "-" if r.get("img_per_cpu_s") is None else f"{r['img_per_cpu_s']:.2f}"
        return "\n".join(
            [
                f"{r['model']} input pipeline, batch {r['batch_size']}, {r['image_size']} px, uint8, {r['cpu']} "
                f"({r['threads']} threads), median of {r['steps']} batches",
                f"  pipeline:  {r['img_per_s']:.2f} img/s "
                f"(min {r['img_per_s_min']:.2f}, max {r['img_per_s_max']:.2f}); "
                f"{_input_label(r)}, {r['interpolation']} resize; {r['num_examples']} images{size}",
                f"  per core:  {per_core} img per CPU-second (all threads' user + system time)",
            ]
        )
    mib = lambda b: "-" if b is None else f"{b / 2**20:,.0f} MiB"
    lines = [
        f"{r['model']} {r['mode']}, batch {r['batch_size']}, {r['image_size']} px, {r['dtype']}, "
        f"{r['device']} ({r['threads']} threads), median of {r['steps']} steps"
        + (f", XLA CPU convolutions: {r['xla_cpu_convolutions']}" if r.get("xla_cpu_convolutions") else "")
        + (f", kernels: {r['kernels']}" if r.get("kernels") else "")
        + (f", {r['jit']} jax.jit" if r.get("jit") == "plain" else ""),
        f"  ours:      {r['img_per_s']:.2f} img/s (min {r['img_per_s_min']:.2f}, max {r['img_per_s_max']:.2f}); "
        f"compile {r['compile_s']:.1f} s cold, {r['compile_cached_s']:.1f} s from the cache; "
        f"peak memory {mib(r['peak_mem_bytes'])} (XLA's temporaries {mib(r.get('xla_temp_bytes'))})",
        f"  compute:   {r['gflops_per_image']:.2f} GFLOP/image, {r['achieved_tflop_per_s'] * 1e3:.1f} GFLOP/s = "
        f"{100 * r['utilisation']:.1f}% of {r['peak_tflop_per_s'] * 1e3:.0f} GFLOP/s ({r['peak_source']})",
    ]
    if r["reference"]:
        lines += [
            f"  reference: {r['ref_img_per_s']:.2f} img/s (min {r['ref_img_per_s_min']:.2f}, "
            f"max {r['ref_img_per_s_max']:.2f}), {r['reference']}",
            f"  ratio ours/reference: {r['ratio']:.2f}x",
        ]
    return "\n".join(lines)


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per result: ours and the reference side by side; an input row has only its images/s."""
    num = lambda v, fmt: "-" if v is None else format(v, fmt)
    rows = [
        "| model | mode | batch | size | dtype | ours img/s (min-max) | reference | ref img/s (min-max) | "
        "ours / ref | compile s (cold / cached) | peak memory MiB | GFLOP/s (utilisation) |",
        "|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ref = r.get("reference")
        detail = f" ({_input_label(r)})" if r["mode"] == "input" else ""
        if r.get("kernels") not in (None, "auto"):
            detail += f" kernels={r['kernels']}"
        if r.get("jit") == "plain":
            detail += " (plain jax.jit)"
        achieved, utilisation = r.get("achieved_tflop_per_s"), r.get("utilisation")
        rows.append(
            f"| {r['model']}{' ' + str(r['model_options']) if r.get('model_options') else ''}{detail} | "
            f"{r['mode']} | "
            f"{r['batch_size']} | {r['image_size']} | {r['dtype']} | "
            f"{r['img_per_s']:.2f} ({r['img_per_s_min']:.2f}-{r['img_per_s_max']:.2f}) | {ref or '-'} | "
            + (f"{r['ref_img_per_s']:.2f} ({r['ref_img_per_s_min']:.2f}-{r['ref_img_per_s_max']:.2f})" if ref else "-")
            + f" | {num(r.get('ratio'), '.2f')} | "
            + (f"{r['compile_s']:.1f} / {r['compile_cached_s']:.1f}" if r.get("compile_s") is not None else "-")
            + f" | {num(r.get('peak_mem_bytes') and r['peak_mem_bytes'] / 2**20, ',.0f')} | "
            + (f"{achieved * 1e3:.1f} ({100 * utilisation:.0f}%)" if achieved is not None else "-")
            + " |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(markdown_table([json.loads(line) for line in f if line.strip()]))
        return 0
    try:
        result = run(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else format_table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
