"""`python -m inception_jax.convert --model NAME IN_FILE OUT_FILE`: PyTorch weights -> a Flax file.

IN_FILE is a local timm/torchvision `.safetensors` or `.pth` (read with PyTorch's weights-only loader).
OUT_FILE is msgpack (no code can hide in it); load it back with
`model, variables = inception_jax.convert.load_variables(OUT_FILE)`.
"""

from __future__ import annotations

import argparse
import sys

from inception_jax.convert.files import save_variables
from inception_jax.convert.torch_weights import WeightMismatchError, from_torch
from inception_jax.models import profile, registry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inception_jax.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(registry.list_models())}")
    parser.add_argument("in_file", help="local .safetensors or .pth state_dict")
    parser.add_argument("out_file", help="where to write the Flax variables (.msgpack)")
    parser.add_argument("--aux-logits", action="store_true", help="the file has aux-head weights; keep them")
    parser.add_argument("--drop-aux", action="store_true", help="discard aux-head weights found in the file")
    parser.add_argument("--num-classes", type=int, default=None, help="classifier size in the file")
    args = parser.parse_args(argv)

    try:
        registry.get_entry(args.model)
    except ValueError as e:
        parser.error(str(e))
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


if __name__ == "__main__":
    sys.exit(main())
