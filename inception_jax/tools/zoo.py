"""Model report: `inception-models [--json] [--models NAME ...]`.

One row per registered variant: parameters without and with aux heads, GMACs at the default input
size (conv + linear multiply-accumulates counted from the traced program, see `profile.py`), and the
default and minimum input sizes. Nothing is allocated or run: shapes come from `jax.eval_shape`.
"""

from __future__ import annotations

import argparse
import json
import sys

from inception_jax.models import profile, registry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="inception-models", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--models", nargs="*", default=None, help="only these variants")
    args = parser.parse_args(argv)
    names = args.models or registry.list_models()
    for name in names:
        registry.get_entry(name)  # unknown names fail before any tracing
    rows = [profile.summary_row(n) for n in names]
    print(json.dumps(rows, indent=2) if args.json else profile.summary_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
