"""Every training config field with its default: the schema `configs/*.py` start from.

Config files call `base_config()` and change what their recipe needs. The trainer fills fields a
(notebook-made) config leaves out from here and rejects fields that are not here, with a suggestion.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from inception_jax.models import registry


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.name = "inception_v3"  # registry name; any other c.model.* field is a model option

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "imagenet2012"  # a TFDS name; "digits" is the built-in dataset
    c.dataset.data_dir = placeholder(str)  # TFDS data dir (None: TFDS's default, ~/tensorflow_datasets)
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.shuffle_buffer = 10_000
    c.dataset.cache = False  # keep decoded examples in memory (small datasets only)

    c.input = ml_collections.ConfigDict()
    c.input.image_size = placeholder(int)  # None: the variant's default input size
    c.input.crop_pct = placeholder(float)  # None: the variant's default eval crop fraction
    c.input.mean = placeholder(tuple)  # None: the variant's default normalisation
    c.input.std = placeholder(tuple)
    c.input.interpolation = placeholder(str)
    c.input.train_augment = "inception_crop"  # | "resize_flip" | "none"
    c.input.color_distortion = False

    c.batch_size = 256  # global, over all devices of all processes, per optimizer update
    c.eval_batch_size = 256
    c.grad_accum_steps = 1  # k > 1: each update averages k micro-batches of batch_size / k, run in turn
    c.total_steps = 0  # set exactly one of total_steps / num_epochs
    c.num_epochs = 0.0
    c.seed = 0

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "rmsprop"
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.rms_decay = 0.9
    c.optimizer.eps = 1.0
    c.optimizer.rms_initial_scale = 1.0
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.weight_decay = 4e-5
    c.optimizer.weight_decay_mode = "l2"

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "exponential"
    c.schedule.base_learning_rate = 0.045
    c.schedule.decay_rate = 0.94
    c.schedule.decay_epochs = 2.0
    c.schedule.staircase = True
    c.schedule.warmup_epochs = 0.0
    c.schedule.end_learning_rate = 0.0

    c.grad_clip_norm = placeholder(float)
    c.ema_decay = placeholder(float)
    c.label_smoothing = 0.0
    c.aux_loss_weights = ()

    c.bn_statistics = "global"  # "global": over the global batch; "per_device": per device (the papers)
    c.on_nonfinite = "stop"  # "stop": raise naming the step; "skip": skip the update and count it

    c.log_every_steps = 100
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.checkpoint_max_to_keep = 3
    c.progress_bar = True

    # Backend-specific forms (inception_jax/kernels.py): "auto" (CPU forms in programs built for CPUs,
    # XLA's operations on GPUs and TPUs), "xla" or "cpu" everywhere.
    c.kernels = "auto"
    c.compilation_cache = True  # JAX's persistent compilation cache: restarts and sweeps skip recompiling
    c.compilation_cache_dir = placeholder(str)  # None: $JAX_COMPILATION_CACHE_DIR, else ~/.cache/inception_jax/xla
    # On a CPU: "eigen" (XLA's own convolutions; Inception steps 1.2-1.7x faster here) or "ynnpack"
    # (XLA's default library); see inception_jax/compilation.py. No effect on GPUs and TPUs.
    c.xla_cpu_convolutions = "eigen"

    c.init_from = placeholder(str)  # a converted .msgpack or another run's workdir: fine-tune from its weights
    # Fine-tuning (inception_jax/finetune.py): "all" | "head" | "last:K" | "Mixed_7b,Mixed_7c" (blocks + head)
    c.trainable = "all"
    c.freeze_bn = False  # every BatchNorm normalises with (and keeps) its running statistics in training
    c.backbone_lr_multiplier = 1.0  # e.g. 0.1: non-head parameters move at a tenth of the learning rate
    c.eval_only = False  # evaluate the workdir's checkpoint (or init_from) and exit
    return c


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses the `:key=value,key2=value2` suffix of `--config=configs/x.py:...` (big_vision style).

    A bare word sets that key to True (`:runlocal`). Values are parsed as Python literals when they
    look like one (`lr=0.1`, `aux=False`), else kept as strings. Unknown keys are an error.
    """
    import ast

    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in out:
            raise ValueError(f"unknown config argument {key!r}; valid: {', '.join(sorted(defaults))}")
        if not value:
            out[key] = True
            continue
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def imagenet_recipe(c: ml_collections.ConfigDict, *, dataset: str = "imagenet2012") -> None:
    """Data settings shared by the ImageNet configs; imagenette is a drop-in (320px, 10 classes)."""
    c.dataset.name = dataset
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.input.train_augment = "inception_crop"
    c.input.color_distortion = True
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 1000


def shrink_for_local_run(c: ml_collections.ConfigDict) -> None:
    """`:runlocal`: a tiny, fast variant of any config for smoke runs on a laptop or CI."""
    c.model.width_multiplier = 0.25
    if "depths" in registry.model_options(c.model.name):  # v4, IR: one block per stage compiles in seconds
        c.model.depths = (1, 1, 1)
    c.input.image_size = 75 if c.model.name != "googlenet" else 32
    c.batch_size = 8
    c.eval_batch_size = 8
    c.total_steps = 4
    c.num_epochs = 0.0
    c.log_every_steps = 2
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 2
    c.dataset.shuffle_buffer = 16
