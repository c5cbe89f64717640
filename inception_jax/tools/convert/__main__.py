"""`inception-convert [--from torch|keras] --model NAME IN_FILE OUT_FILE`: PyTorch or Keras
weights -> a Flax file.

IN_FILE is a timm/torchvision `.safetensors` or `.pth` (`--from torch`, read with PyTorch's weights-only
loader) or a `keras.applications` InceptionV3 / InceptionResNetV2 file (`--from keras`, read with h5py).
OUT_FILE is msgpack, which cannot carry code, and records the model options the weights need (for Keras,
`keras_model_options`), the file's class count, its publisher's evaluation preprocessing
(`--preprocessing`; the default where only one is known) and ImageNet's class names. See docs/weights.md.
"""

from __future__ import annotations

import argparse
import sys

from inception_jax import preprocessing
from inception_jax.models import profile, registry
from inception_jax.tools.convert.keras_weights import SUPPORTED as KERAS_MODELS
from inception_jax.tools.convert.keras_weights import from_keras, keras_model_options
from inception_jax.tools.convert.torch_weights import WeightMismatchError, from_torch
from inception_jax.weights import save_variables


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="inception-convert", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--from",
        dest="source",
        choices=("torch", "keras"),
        default="torch",
        help="the framework IN_FILE comes from (default: torch)",
    )
    parser.add_argument(
        "--model",
        required=True,
        help=f"one of: {', '.join(registry.list_models())} (with --from keras: {', '.join(KERAS_MODELS)})",
    )
    parser.add_argument(
        "in_file", help="local .safetensors or .pth state_dict; with --from keras a .keras, .weights.h5 or .h5 file"
    )
    parser.add_argument("out_file", help="where to write the Flax variables (.msgpack)")
    parser.add_argument("--aux-logits", action="store_true", help="the file has aux-head weights; keep them")
    parser.add_argument("--drop-aux", action="store_true", help="discard aux-head weights found in the file")
    parser.add_argument("--num-classes", type=int, default=None, help="classifier size in the file")
    parser.add_argument(
        "--preprocessing",
        metavar="PRESET",
        default=None,
        help="the publisher's evaluation preprocessing to record: one of "
        f"{', '.join(preprocessing.PRESETS)}, or 'none' (default: the model's only preset, if it has one)",
    )
    args = parser.parse_args(argv)

    try:
        registry.get_entry(args.model)
    except ValueError as e:
        parser.error(str(e))
    if args.preprocessing not in (None, "none"):
        try:
            preprocessing.preset(args.preprocessing)
        except ValueError as e:
            parser.error(f"--preprocessing: {e}")
    if args.source == "keras":
        return _from_keras(parser, args)
    options = {}
    if args.aux_logits:
        options["aux_logits"] = True
    if args.num_classes is not None:
        options["num_classes"] = args.num_classes
    try:
        variables = from_torch(args.model, args.in_file, drop_aux=args.drop_aux, **options)
    except (WeightMismatchError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    transform = _choose_preprocessing(args, "torch")
    if transform is False:
        return 2
    num_classes = registry.create_model(args.model, **options).num_classes
    _save(args, variables, options, transform, num_classes, "")
    return 0


def _choose_preprocessing(args, framework: str):
    """The EvalTransform to record, None (unknown), or False after printing why the choice is the user's."""
    if args.preprocessing == "none":
        return None
    if args.preprocessing is not None:
        return preprocessing.preset(args.preprocessing)
    names = preprocessing.presets_for(args.model, framework)
    if not names:
        print(
            f"note: no publisher's preprocessing is known for {args.model} weights from {framework}; none recorded "
            "(record one with --preprocessing PRESET; inception-predict then needs its transform given)",
            file=sys.stderr,
        )
        return None
    transforms = [preprocessing.preset(n) for n in names]
    if any(t != transforms[0] for t in transforms[1:]):
        print(
            f"error: {args.model} weights from {framework} are evaluated differently by their publishers; name "
            f"the one these came from with --preprocessing (one of {', '.join(names)}), or 'none'",
            file=sys.stderr,
        )
        return False
    if len(names) > 1:
        print(f"note: recording {names[0]}'s preprocessing (the same as {', '.join(names[1:])})", file=sys.stderr)
    return transforms[0]


def _save(args, variables, options, transform, num_classes: int, origin: str) -> None:
    class_names = preprocessing.imagenet_class_names(num_classes)
    save_variables(
        args.out_file,
        variables,
        model=args.model,
        options=options,
        preprocessing=transform,
        class_names=class_names,
    )
    n = profile.count_params(variables["params"])
    print(f"wrote {args.out_file}: {args.model}{origin} {options or ''} with {n:,} parameters")
    print(f"  preprocessing: {transform.describe() if transform else 'unknown (none recorded)'}")
    if class_names:
        print(f"  class names: ImageNet's {num_classes} ({', '.join(class_names[:3])}, ...)")


def _from_keras(parser, args) -> int:
    if args.model not in KERAS_MODELS:
        parser.error(f"--from keras supports --model {' or '.join(KERAS_MODELS)}, got {args.model!r}")
    if args.aux_logits or args.drop_aux:
        parser.error("Keras' InceptionV3 and InceptionResNetV2 have no aux head: drop --aux-logits / --drop-aux")
    overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
    try:
        model, variables = from_keras(args.model, args.in_file, **overrides)
    except (WeightMismatchError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    transform = _choose_preprocessing(args, "keras")
    if transform is False:
        return 2
    # What from_keras built the model with, so load_variables rebuilds the same module.
    options = {**keras_model_options(args.model), "num_classes": model.num_classes}
    _save(args, variables, options, transform, model.num_classes, " (from Keras)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
