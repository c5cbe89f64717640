"""What `inception-evaluate`, `inception-predict` and `inception-export` run: a converted weights file or
a training run's newest checkpoint, as one `Source` (module, variables, eval transform, class names),
and the command-line flags that override the transform."""

from __future__ import annotations

import dataclasses
import os

from inception_jax import preprocessing
from inception_jax.preprocessing import EvalTransform

TRANSFORM_FLAGS = ("image_size", "crop_pct", "interpolation", "mean", "std", "resize")


class InputError(ValueError):
    """Input a command cannot use; the message names it and what to do (exit status 2)."""


@dataclasses.dataclass
class Source:
    name: str  # the registered model name
    model: object  # the flax module
    variables: dict  # {"params", "batch_stats"}
    transform: EvalTransform | None  # the evaluation preprocessing, None: unknown
    class_names: tuple[str, ...] | None  # one per output, None: unknown
    described: str  # for messages: the file, or the run and its step
    options: dict = dataclasses.field(default_factory=dict)  # `registry.create_model(name, **options)`


def add_source_flags(parser) -> None:
    """--weights FILE | --workdir DIR, one required."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--weights", help="a .msgpack written by inception-convert or save_variables")
    group.add_argument("--workdir", help="a training run's directory: its newest checkpoint (EMA weights if kept)")


def add_transform_flags(parser) -> None:
    group = parser.add_argument_group("preprocessing (default: what the weights file or the run records)")
    group.add_argument("--preprocessing", metavar="PRESET", help=f"one of {', '.join(preprocessing.PRESETS)}")
    group.add_argument("--image-size", type=int, help="input side in pixels")
    group.add_argument("--crop-pct", type=float, help="central crop fraction: resize to floor(size / crop_pct)")
    group.add_argument("--interpolation", choices=preprocessing.INTERPOLATIONS)
    group.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="in [0, 1] units")
    group.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="in [0, 1] units")
    group.add_argument("--resize", choices=preprocessing.RESIZES, help="shorter_side (keep aspect) or square")


def load(args) -> Source:
    """The source `--weights` or `--workdir` names."""
    return from_weights(args.weights) if args.weights else from_workdir(args.workdir)


def from_weights(path: str) -> Source:
    from inception_jax.weights import load_weights_file

    if not os.path.isfile(path):
        raise InputError(f"--weights {path!r} does not exist; convert weights with inception-convert")
    try:
        w = load_weights_file(path)
    except (ValueError, OSError) as e:  # not a variables file, or one for a model we do not have
        raise InputError(" ".join(str(e).split())) from None
    return Source(w.name, w.model, dict(w.variables), w.preprocessing, w.class_names, path, dict(w.options))


def from_workdir(workdir: str) -> Source:
    """The run's model (config.json), its newest checkpoint (the EMA weights when the run keeps them, as
    the trainer evaluates), its eval transform (config.input) and class names (a folder's)."""
    import ml_collections

    from inception_jax.trainer import checkpoint, finetune, rundir, train

    saved = rundir.read_config(workdir)
    if saved is None:
        raise InputError(f"--workdir {workdir!r} has no {rundir.CONFIG_FILE}: not a training run's directory")
    config = ml_collections.ConfigDict(saved)
    ema = bool(config.get("ema_decay"))
    try:
        variables, step = checkpoint.load_eval_variables(workdir, ema=ema)
    except FileNotFoundError as e:
        raise InputError(str(e)) from None
    heads = [k for k in finetune.HEAD_MODULES if k in variables["params"]]
    if not heads:
        raise InputError(f"the checkpoint in {workdir!r} has no classifier (none of {finetune.HEAD_MODULES})")
    num_classes = int(variables["params"][heads[0]]["kernel"].shape[-1])
    inp = config.input
    transform = EvalTransform(
        image_size=inp.image_size,
        crop_pct=inp.get("crop_pct") or 1.0,
        interpolation=inp.get("interpolation") or "bilinear",
        mean=inp.mean,
        std=inp.std,
        resize=inp.get("eval_resize") or "shorter_side",
        antialias=inp.get("eval_antialias", True),
        name="the run's config.input",
    )
    names = config.dataset.get("label_names") or checkpoint.read_label_names(workdir)
    described = f"{workdir} at step {step}" + (" (EMA weights)" if ema else "")
    model = train.build_model(config, num_classes)
    options = rundir.jsonable(train.model_options(config, num_classes))
    return Source(config.model.name, model, variables, transform, tuple(names) if names else None, described, options)


def resolve_transform(recorded: EvalTransform | None, args, described: str) -> EvalTransform:
    """The recorded transform, replaced by `--preprocessing`, then field by field by the single flags."""
    base = recorded
    try:
        if args.preprocessing:
            base = preprocessing.preset(args.preprocessing)
        overrides = {k: getattr(args, k) for k in TRANSFORM_FLAGS if getattr(args, k) is not None}
        if base is None:
            if not overrides:
                raise InputError(
                    f"{described} records no preprocessing; name its publisher's with --preprocessing "
                    f"(one of {', '.join(preprocessing.PRESETS)}) or give --image-size, --crop-pct, "
                    "--interpolation, --mean and --std"
                )
            missing = [k for k in ("image_size", "crop_pct", "interpolation", "mean", "std") if k not in overrides]
            if missing:
                flags = ", ".join("--" + k.replace("_", "-") for k in missing)
                raise InputError(f"{described} records no preprocessing, so {flags} must be given too")
            return EvalTransform(**overrides)
        return dataclasses.replace(base, **overrides, name=None) if overrides else base
    except InputError:
        raise
    except ValueError as e:  # a bad flag value, an unknown preset
        raise InputError(str(e)) from None


def check_input_size(source: Source, transform: EvalTransform) -> None:
    from inception_jax.models import registry

    min_size = registry.data_config(source.name).min_input_size
    if transform.image_size < min_size:
        raise InputError(
            f"image size {transform.image_size} is below {source.name}'s minimum input of {min_size} pixels"
        )
