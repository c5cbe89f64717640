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
    c.dataset.name = "imagenet2012"  # a TFDS name; "digits" is the built-in dataset; "folder:DIR" your images
    c.dataset.data_dir = placeholder(str)  # TFDS data dir (None: TFDS's default, ~/tensorflow_datasets)
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.shuffle_buffer = 10_000
    c.dataset.cache = False  # keep decoded examples in memory (small datasets only)
    # Image folders only (docs/training.md, "Your own images"): the share of each class held out for
    # evaluation when there is no DIR/val folder, the seed of that split, and whether images that cannot be
    # decoded are left out (and counted) instead of stopping the run.
    c.dataset.val_fraction = 0.1
    c.dataset.split_seed = 0
    c.dataset.skip_bad_images = False

    c.input = ml_collections.ConfigDict()
    c.input.image_size = placeholder(int)  # None: the variant's default input size
    c.input.crop_pct = placeholder(float)  # None: the variant's default eval crop fraction
    c.input.mean = placeholder(tuple)  # None: the variant's default normalisation
    c.input.std = placeholder(tuple)
    c.input.interpolation = placeholder(str)
    # The evaluation resize (inception_jax/preprocessing.py): "shorter_side" keeps the aspect ratio (timm,
    # torchvision); "square" stretches the image (Keras' load_img, pytorch-fid). antialias=False: pytorch-fid.
    c.input.eval_resize = "shorter_side"
    c.input.eval_antialias = True
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
    # On a CPU: "eigen" (XLA's own convolutions, faster here: BENCHMARKS.md) or "ynnpack"
    # (XLA's default library); see inception_jax/kernels.py. No effect on GPUs and TPUs.
    c.xla_cpu_convolutions = "eigen"

    c.init_from = placeholder(str)  # a converted .msgpack or another run's workdir: fine-tune from its weights
    # Fine-tuning (inception_jax/trainer/finetune.py): "all" | "head" | "last:K" | "Mixed_7b,Mixed_7c" (blocks + head)
    c.trainable = "all"
    c.freeze_bn = False  # every BatchNorm normalises with (and keeps) its running statistics in training
    c.backbone_lr_multiplier = 1.0  # e.g. 0.1: non-head parameters move at a tenth of the learning rate
    c.eval_only = False  # evaluate the workdir's checkpoint (or init_from) and exit
    return c


def flag_value(value) -> str:
    """A Python value as `--config.x=` text that ml_collections parses back to the same value."""
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        inner = ", ".join(repr(v) if isinstance(v, str) else flag_value(v) for v in value)
        if isinstance(value, list):
            return f"[{inner}]"
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value) if isinstance(value, float) else str(value)


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


def imagenet_data(c: ml_collections.ConfigDict, dataset: str = "imagenet2012") -> None:
    """Data settings shared by the ImageNet configs; imagenette is a drop-in (320px, 10 classes)."""
    c.dataset.name = dataset
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.input.train_augment = "inception_crop"
    c.input.color_distortion = True
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 1000


def imagenet_config(arg: str | None, recipe, **recipe_args) -> ml_collections.ConfigDict:
    """An ImageNet config: `recipe(c, **args)` on the ImageNet data settings. `arg` (the part after
    `:` in `--config=configs/x.py:...`) sets the recipe's own keys and the shared ones: `dataset`
    (imagenet2012, or imagenette for a quick check), `bf16` (bfloat16 compute for GPUs and TPUs; the
    parameters, BatchNorm statistics, loss and optimizer stay float32) and `runlocal` (tiny, for a smoke run)."""
    args = parse_arg(arg, dataset="imagenet2012", bf16=False, runlocal=False, **recipe_args)
    c = base_config()
    imagenet_data(c, args.dataset)
    recipe(c, **{key: args[key] for key in recipe_args})
    if args.bf16:
        c.model.dtype = "bfloat16"
    if args.runlocal:
        shrink_for_local_run(c)
    return c


# --- the papers' recipes (REFERENCES.md §2) ----------------------------------------------------------


def googlenet_2014(c: ml_collections.ConfigDict, paper: bool = False) -> None:
    """GoogLeNet (Szegedy et al. 2015, section 6): SGD momentum 0.9, learning rate x0.96 every 8
    epochs, Polyak averaging, two aux heads weighted 0.3 (section 5). The paper gives no base rate;
    0.01 at batch 256 is Caffe's bvlc_googlenet choice scaled. `paper`: the 2014 network (true 5x5
    branches, LRN instead of BatchNorm, dropout 0.4)."""
    c.model.name = "googlenet"
    c.model.aux_logits = True
    if paper:
        c.model.branch3_kernel = 5
        c.model.norm = "lrn"
        c.model.dropout_rate = 0.4
    c.batch_size, c.eval_batch_size, c.num_epochs = 256, 500, 90.0
    c.optimizer.name, c.optimizer.momentum, c.optimizer.weight_decay = "sgd", 0.9, 2e-4
    _exponential(c, 0.01, 0.96, 8.0)
    c.aux_loss_weights = (0.3, 0.3)
    c.ema_decay = 0.9999


def bn_inception_2015(c: ml_collections.ConfigDict) -> None:
    """BN-Inception's "BN-x30" (Ioffe & Szegedy 2015, section 4.2): learning rate 0.045, decay 6x
    faster than the Inception baseline, weight decay / 5, no dropout, fewer photometric distortions."""
    c.model.name = "bn_inception"
    c.model.dropout_rate = 0.0
    c.input.color_distortion = False
    c.batch_size, c.eval_batch_size, c.num_epochs = 256, 500, 60.0
    c.optimizer.name, c.optimizer.momentum, c.optimizer.weight_decay = "sgd", 0.9, 4e-5 / 5
    _exponential(c, 0.045, 0.96, 8.0 / 6.0)


def rethinking_2016(c: ml_collections.ConfigDict, model: str = "inception_v3") -> None:
    """Rethinking the Inception Architecture (Szegedy et al. 2016, section 8, Table 3): learning rate
    0.045 x0.94 every 2 epochs, clipping at 2.0, Polyak averaging, batch 32 x 50 replicas with
    per-replica BatchNorm, the aux head weighted 0.4 (TF-slim). `inception_v3` adds Table 3's RMSProp
    (decay 0.9, epsilon 1.0) and label smoothing 0.1 to `inception_v2`'s momentum SGD."""
    if model not in ("inception_v3", "inception_v2"):
        raise ValueError(
            f"configs/inception_v3.py: model={model!r}; the Rethinking recipe trains inception_v3 or inception_v2"
        )
    c.model.name = model
    c.model.aux_logits = True
    c.model.dropout_rate = 0.2  # TF-slim's keep_prob 0.8 (REFERENCES.md §1.2)
    c.batch_size, c.eval_batch_size, c.num_epochs = 1600, 1000, 100.0
    if model == "inception_v3":
        c.optimizer.name, c.optimizer.rms_decay, c.optimizer.momentum, c.optimizer.eps = "rmsprop", 0.9, 0.9, 1.0
        c.label_smoothing = 0.1
    else:
        c.optimizer.name, c.optimizer.momentum = "sgd", 0.9
        c.label_smoothing = 0.0
    c.optimizer.weight_decay = 4e-5
    _exponential(c, 0.045, 0.94, 2.0)
    c.grad_clip_norm = 2.0
    c.aux_loss_weights = (0.4,)
    c.ema_decay = 0.9999
    c.bn_statistics = "per_device"


def inception_v4_2017(c: ml_collections.ConfigDict, model: str = "inception_v4") -> None:
    """Inception-v4 and Inception-ResNet (Szegedy et al. 2017, section 4): RMSProp (decay 0.9,
    epsilon 1.0), learning rate 0.045 x0.94 every 2 epochs, clipping (the paper names no threshold;
    v3's 2.0), Polyak averaging, batch 32 x 20 replicas; label smoothing 0.1 and an aux head weighted
    0.4 as TF-slim trains them (IR-v1 has no aux head in any reference)."""
    if model not in ("inception_v4", "inception_resnet_v2", "inception_resnet_v1"):
        raise ValueError(
            f"configs/inception_v4.py: model={model!r}; the v4 paper's recipe trains "
            "inception_v4, inception_resnet_v2 or inception_resnet_v1"
        )
    c.model.name = model
    c.model.aux_logits = model != "inception_resnet_v1"
    c.model.dropout_rate = 0.2  # TF-slim keep_prob 0.8
    c.batch_size, c.eval_batch_size, c.num_epochs = 640, 640, 100.0
    c.optimizer.name = "rmsprop"
    _exponential(c, 0.045, 0.94, 2.0)
    c.grad_clip_norm = 2.0
    c.label_smoothing = 0.1
    c.aux_loss_weights = (0.4,) if c.model.aux_logits else ()
    c.ema_decay = 0.9999
    c.bn_statistics = "per_device"


def transfer_recipe(c: ml_collections.ConfigDict, init_from: str, blocks: int) -> None:
    """Fine-tuning a converted file (torchvision's fine-tuning tutorial, Keras' transfer-learning guide):
    the file's model with a new classifier; the head and the last `blocks` blocks train (0: the head
    only), the backbone at a tenth of the head's rate, every BatchNorm frozen (small batches give poor
    statistics); SGD with Nesterov momentum on a cosine schedule, label smoothing 0.1."""
    from inception_jax.weights import read_model_spec

    name, options = read_model_spec(init_from)
    c.model.name = name
    for key, value in options.items():
        if key != "num_classes":  # the dataset's classes; the head is re-initialised
            c.model[key] = tuple(value) if isinstance(value, list) else value
    c.model.aux_logits = False
    c.aux_loss_weights = ()
    c.init_from = init_from
    c.trainable = f"last:{blocks}" if blocks else "head"
    c.freeze_bn = True
    c.backbone_lr_multiplier = 0.1
    c.optimizer.name = "sgd"
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 0.0
    c.schedule.name = "cosine"
    c.schedule.base_learning_rate = 0.01
    c.label_smoothing = 0.1


def _exponential(c, base: float, rate: float, every_epochs: float) -> None:
    c.schedule.name = "exponential"
    c.schedule.base_learning_rate = base
    c.schedule.decay_rate = rate
    c.schedule.decay_epochs = every_epochs
    c.schedule.staircase = True


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
