"""`inception-convert [--from torch|keras] --model NAME IN_FILE OUT_FILE`: PyTorch or Keras
weights -> a Flax file.

IN_FILE is a timm/torchvision `.safetensors` or `.pth` (`--from torch`, read with PyTorch's weights-only
loader) or a `keras.applications` InceptionV3 / InceptionResNetV2 file (`--from keras`, read with h5py).
OUT_FILE is msgpack, which cannot carry code, and records the model options the weights need (for Keras,
`keras_model_options`) and the file's class count. Formats and loading: docs/weights.md.
"""

from __future__ import annotations

import argparse
import sys

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
    args = parser.parse_args(argv)

    try:
        registry.get_entry(args.model)
    except ValueError as e:
        parser.error(str(e))
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
    save_variables(args.out_file, variables, model=args.model, options=options)
    n = profile.count_params(variables["params"])
    print(f"wrote {args.out_file}: {args.model} {options or ''} with {n:,} parameters")
    return 0


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
    # What from_keras built the model with, so load_variables rebuilds the same module.
    options = {**keras_model_options(args.model), "num_classes": model.num_classes}
    save_variables(args.out_file, variables, model=args.model, options=options)
    n = profile.count_params(variables["params"])
    print(f"wrote {args.out_file}: {args.model} (from Keras) {options} with {n:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
