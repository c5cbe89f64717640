"""Model report: `python -m inception_jax.models [--json] [--models NAME ...]`.

One row per registered variant: parameters without and with aux heads, GMACs at the default input
size (conv + linear multiply-accumulates counted from the traced program, see `profile.py`), and the
default and minimum input sizes. Nothing is allocated or run: shapes come from `jax.eval_shape`.
"""

from __future__ import annotations

import argparse
import json
import sys

from inception_jax.models import profile, registry


def model_row(name: str) -> dict:
    data = registry.data_config(name)
    model = registry.create_model(name, aux_logits=False)
    variables = profile.abstract_variables(model, data.input_size)
    row = {
        "model": name,
        "params": profile.count_params(variables["params"]),
        "params_with_aux": None,
        "gmacs": round(profile.count_macs(model, variables, data.input_size) / 1e9, 3),
        "input_size": data.input_size,
        "min_input_size": data.min_input_size,
    }
    with_aux = registry.create_model(name, aux_logits=True)
    if profile.num_aux_heads(with_aux, data.input_size):
        row["params_with_aux"] = profile.count_params(
            profile.abstract_variables(with_aux, data.input_size)["params"])
    return row


def format_table(rows: list[dict]) -> str:
    header = f"{'model':<22}{'params':>14}{'params+aux':>14}{'GMACs':>9}{'input':>7}{'min':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        aux = f"{r['params_with_aux']:,}" if r["params_with_aux"] else "-"
        lines.append(f"{r['model']:<22}{r['params']:>14,}{aux:>14}{r['gmacs']:>9.3f}"
                     f"{r['input_size']:>7}{r['min_input_size']:>6}")
    lines.append("GMACs: conv + linear multiply-accumulates at the default input size, batch 1 "
                 "(the count timm/torchvision report).")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inception_jax.models", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--models", nargs="*", default=None, help="only these variants")
    args = parser.parse_args(argv)
    names = args.models or registry.list_models()
    for name in names:
        registry.get_entry(name)  # unknown names fail before any tracing
    rows = [model_row(n) for n in names]
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
