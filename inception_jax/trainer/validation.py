"""Config checks that run before anything expensive: one line naming the field, the value and the fix."""

from __future__ import annotations

import difflib
import json
import os
import tempfile

import ml_collections

from inception_jax import kernels
from inception_jax.models import profile, registry
from inception_jax.trainer import finetune
from inception_jax.trainer.checkpoint import CHECKPOINT_DIR
from inception_jax.trainer.config import base_config
from inception_jax.trainer.rundir import CONFIG_FILE


class ConfigError(ValueError):
    """A bad config value; `main` prints it and exits with status 2."""


_CHOICES = {
    "optimizer.name": ("rmsprop", "sgd", "adamw"),
    "optimizer.weight_decay_mode": ("l2", "decoupled"),
    "schedule.name": ("exponential", "cosine", "constant"),
    "input.train_augment": ("inception_crop", "resize_flip", "none"),
    "input.eval_resize": ("shorter_side", "square"),
    "input.eval_antialias": (True, False),
    "bn_statistics": ("global", "per_device"),
    "on_nonfinite": ("stop", "skip"),
    "xla_cpu_convolutions": ("eigen", "ynnpack"),
    "kernels": kernels.KERNELS,
}


def _flat(cfg: ml_collections.ConfigDict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict) and k != "model":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def validated(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Returns a copy with defaults filled in; raises ConfigError on the first bad field."""
    c = base_config()
    known = _flat(c)
    given = _flat(config)
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean config.{close[0]}?" if close else ""
            raise ConfigError(f"unknown config field config.{key}.{hint}")
    for key, value in given.items():
        if key == "model":
            continue
        *parents, leaf = key.split(".")
        target = _get(c, ".".join(parents)) if parents else c
        try:
            target[leaf] = value
        except TypeError as e:
            raise ConfigError(f"config.{key}={value!r} has the wrong type: {e}") from None
    if "model" in config:
        c.model = ml_collections.ConfigDict(dict(config.model))
    if "name" not in c.model:
        raise ConfigError("config.model.name is missing; set it to one of " + ", ".join(registry.list_models()))

    try:
        registry.get_entry(c.model.name)
    except ValueError as e:
        raise ConfigError(f"config.model.name: {e}") from None
    options = registry.model_options(c.model.name)
    for key in c.model:
        if key == "kernels":
            raise ConfigError(
                f"config.model.kernels={c.model.kernels!r}: set config.kernels instead (it also "
                "applies to the optimizer's norms)"
            )
        if key != "name" and key not in options:
            close = difflib.get_close_matches(key, options, n=1)
            hint = f" Did you mean config.model.{close[0]}?" if close else ""
            raise ConfigError(
                f"config.model.{key} is not an option of {c.model.name!r}.{hint} Options: {', '.join(sorted(options))}."
            )

    data = registry.data_config(c.model.name)
    for key in ("image_size", "crop_pct", "mean", "std", "interpolation"):
        if c.input[key] is None:  # the variant's own defaults, as timm's pretrained_cfg
            c.input[key] = getattr(data, "input_size" if key == "image_size" else key)
    image_size(c)

    for key, choices in _CHOICES.items():
        value = _get(c, key)
        if value not in choices:
            raise ConfigError(f"config.{key}={value!r} is not one of {', '.join(map(repr, choices))}.")

    _positive(c, "batch_size", "a positive global batch size divisible by the device count")
    _positive(c, "eval_batch_size", "a positive global batch size divisible by the device count")
    _positive(c, "schedule.base_learning_rate", "e.g. 0.045 for RMSProp as in the papers")
    for key in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps", "checkpoint_max_to_keep"):
        _positive(c, key, "a positive number of steps")
    if (c.total_steps > 0) == (c.num_epochs > 0):
        raise ConfigError(
            f"set exactly one of config.total_steps ({c.total_steps}) and config.num_epochs ({c.num_epochs}) "
            "to a positive value; e.g. --config.total_steps=1000 --config.num_epochs=0."
        )
    if c.total_steps < 0 or c.num_epochs < 0:
        raise ConfigError("config.total_steps and config.num_epochs must not be negative.")
    if not 0.0 < c.dataset.val_fraction < 1.0:
        raise ConfigError(
            f"config.dataset.val_fraction={c.dataset.val_fraction} must be in (0, 1): the share of each class "
            "of an image folder held out for evaluation; e.g. 0.1."
        )
    if not 0.0 <= c.label_smoothing < 1.0:
        raise ConfigError(f"config.label_smoothing={c.label_smoothing} must be in [0, 1); the papers use 0.1.")
    if c.ema_decay is not None and not 0.0 < c.ema_decay < 1.0:
        raise ConfigError(f"config.ema_decay={c.ema_decay} must be in (0, 1) (e.g. 0.9999) or None to disable.")
    if c.grad_clip_norm is not None and c.grad_clip_norm <= 0:
        raise ConfigError(f"config.grad_clip_norm={c.grad_clip_norm} must be positive, or None to disable.")
    if not isinstance(c.grad_accum_steps, int) or c.grad_accum_steps < 1:
        raise ConfigError(
            f"config.grad_accum_steps={c.grad_accum_steps!r} must be a whole number >= 1 (1: no accumulation)."
        )
    try:
        finetune.parse_trainable(c.trainable)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not c.backbone_lr_multiplier > 0:
        raise ConfigError(
            f"config.backbone_lr_multiplier={c.backbone_lr_multiplier!r} must be > 0 (1.0: the "
            "head's rate); to hold the backbone fixed use config.trainable='head'."
        )
    if any(w < 0 for w in c.aux_loss_weights):
        raise ConfigError(f"config.aux_loss_weights={tuple(c.aux_loss_weights)} must not be negative.")
    return c


def check_batch_split(config, num_devices: int) -> None:
    """The global batches split evenly over the devices, and each device's rows into the micro-batches."""
    k = int(config.grad_accum_steps)
    for field in ("batch_size", "eval_batch_size"):
        size, unit = config[field], num_devices * (k if field == "batch_size" else 1)
        if size <= 0 or size % unit:
            lower = max(unit, size // unit * unit)
            what = (
                f"the device count {num_devices}"
                if unit == num_devices
                else f"{unit} (the device count {num_devices} x config.grad_accum_steps={k})"
            )
            raise ConfigError(
                f"config.{field}={size} must be a positive multiple of {what}; use {lower} or {lower + unit}."
            )


def _get(c, dotted: str):
    for part in dotted.split("."):
        c = c[part]
    return c


def _positive(c, key: str, fix: str) -> None:
    value = _get(c, key)
    if value is None or value <= 0:
        raise ConfigError(f"config.{key}={value!r} must be positive: {fix}.")


def image_size(config) -> int:
    """The training/eval input side: config.input.image_size or the variant's default."""
    data = registry.data_config(config.model.name)
    size = config.input.image_size or data.input_size
    if size < data.min_input_size:
        raise ConfigError(
            f"config.input.image_size={size} is below {config.model.name}'s minimum input size "
            f"{data.min_input_size}; use --config.input.image_size={data.min_input_size} or larger."
        )
    return size


def check_model_against_config(config, model, size: int) -> None:
    """The model's options must build a network (checked by tracing its init, which builds the aux heads
    too and costs no compile), and aux loss weights must match its aux heads one for one."""
    try:
        profile.abstract_variables(model, size)
    except ValueError as e:  # an option value the model rejects, e.g. depths=(1, 0, 1)
        raise ConfigError(f"config.model: {e}") from None
    heads = model.num_aux_heads
    weights = tuple(config.aux_loss_weights)
    if len(weights) != heads:
        fix = (
            "set config.model.aux_logits=True or config.aux_loss_weights=()"
            if heads == 0
            else f"give {heads} weight(s), e.g. config.aux_loss_weights={(0.3,) * heads}"
        )
        raise ConfigError(
            f"config.aux_loss_weights={weights} has {len(weights)} weight(s) but "
            f"{config.model.name} with these options has {heads} aux head(s); {fix}."
        )


def check_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(
            f"--workdir={workdir!r} cannot be written ({e.strerror}); choose a writable directory."
        ) from None


def check_resume(config, workdir: str) -> None:
    """A workdir with checkpoints resumes from them, so an `init_from` it did not start from would be
    silently ignored: refuse that instead. The same `init_from` (a restarted fine-tuning job) is fine.
    Its checkpoints hold the block layout they were written in (`model.scan_blocks`): refuse another."""
    ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(ckpt_dir) or not any(name.isdigit() for name in os.listdir(ckpt_dir)):
        return
    try:
        with open(os.path.join(workdir, CONFIG_FILE)) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = {}
    scanned, now = bool(saved.get("model", {}).get("scan_blocks", False)), bool(config.model.get("scan_blocks", False))
    if saved and scanned != now:
        raise ConfigError(
            f"config.model.scan_blocks={now} but the checkpoints in {ckpt_dir} were written with "
            f"scan_blocks={scanned}; resume with --config.model.scan_blocks={scanned}, or start a new --workdir "
            f"with --config.init_from={workdir} (init_from converts between the layouts)."
        )
    if not config.init_from:
        return
    started_from = saved.get("init_from")
    if started_from != config.init_from:
        raise ConfigError(
            f"config.init_from={config.init_from!r} conflicts with the checkpoints already in {ckpt_dir} "
            f"(that run started from {started_from!r}), which a restart resumes from. Use a new --workdir "
            "to start from init_from, or drop --config.init_from to resume."
        )


def check_classes(config, workdir: str, class_names) -> None:
    """A run resumed on an image folder must find the classes it started with (config.json's
    `dataset.label_names`): its checkpoints' outputs are indexed by them."""
    ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(ckpt_dir) or not any(name.isdigit() for name in os.listdir(ckpt_dir)):
        return
    try:
        with open(os.path.join(workdir, CONFIG_FILE)) as f:
            before = json.load(f).get("dataset", {}).get("label_names")
    except (OSError, ValueError, AttributeError):
        return
    if before is not None and list(before) != list(class_names):
        added, removed = sorted(set(class_names) - set(before)), sorted(set(before) - set(class_names))
        change = f"added {added}, removed {removed}" if added or removed else "the same names in another order"
        raise ConfigError(
            f"config.dataset.name={config.dataset.name!r}: the classes changed since the checkpoints in {ckpt_dir} "
            f"were written ({change}), so the model's outputs would mean other classes; restore the folder, or "
            f"start a new --workdir with --config.init_from={workdir} to fine-tune from this run."
        )
