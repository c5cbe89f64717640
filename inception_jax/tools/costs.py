"""The papers' cost claims, counted on our own layers: `inception-costs [--models NAME ...]`.

Every number comes from building the actual `ConvBN` layers and Inception modules of `models/` and
counting them with `models.profile` (conv + linear multiply-accumulates from the traced program,
parameters from `jax.eval_shape`); nothing is computed from a formula. Prints markdown;
`experiments/results/costs.md` is its committed output. `model_cost` gives the parameters and GMACs
of one run's model (sweep and report use it).
"""

from __future__ import annotations

import argparse
import sys
import types
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from inception_jax.models import googlenet, inception_v3, layers, profile, registry


class _Probe(nn.Module):
    """Runs one block on a (1, size, size, in_channels) input, so `profile` can count it alone."""

    block: nn.Module
    in_channels: int

    def __call__(self, x, train: bool = False):
        return self.block(x, train)


class _Chain(nn.Module):
    """Conv-BN-ReLU layers in sequence: `specs` = ((features, kernel, padding), ...)."""

    specs: tuple
    conv: Any

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, (features, kernel, padding) in enumerate(self.specs):
            x = self.conv(features, kernel, padding=padding, name=f"conv{i}")(x, train)
        return x


def _conv_factory(width_multiplier: float = 1.0, padding_mode: str = "torch"):
    """The networks' own `ConvBN` factory (`layers.bound_conv`) with the models' default options."""
    options = types.SimpleNamespace(
        padding_mode=padding_mode,
        bn_momentum=0.9,
        bn_epsilon=1e-3,
        dtype=None,
        param_dtype=jnp.float32,
        width_multiplier=width_multiplier,
    )
    return layers.bound_conv(options)


def count(net: nn.Module, size: int) -> tuple[int, int]:
    """(parameters, MACs of one eval forward pass) of a network (or `_Probe`) on one `size` px image."""
    return profile.params_and_macs(net, size)


def block_cost(block: nn.Module, in_channels: int, size: int) -> tuple[int, int]:
    """(parameters, MACs) of one block on a `size` x `size` x `in_channels` input."""
    return count(_Probe(block, in_channels), size)


def build(model: dict, num_classes: int) -> nn.Module:
    """The network of a run: `model` is config.model as a dict (name and options)."""
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items() if k != "name"}
    options.setdefault("num_classes", num_classes)
    return registry.create_model(model["name"], **options)


def model_cost(model: dict, image_size: int, num_classes: int) -> tuple[int, float]:
    """(parameters, GMACs) of a run's model. Parameters include the aux heads when `aux_logits` is on
    (they are trained); GMACs are the inference cost, which runs no aux head."""
    params, macs = count(build(model, num_classes), image_size)
    return params, macs / 1e9


# --- The claims --------------------------------------------------------------------------------------


def _single_layer_rows() -> list[dict]:
    """Rethinking (Szegedy et al. 2015) sections 3.1-3.2, on a 35x35 grid with 64 -> 64 filters."""
    conv, size, c = _conv_factory(), 35, 64
    built = {
        "5x5": ((c, 5, 2),),
        "3x3": ((c, 3, 1),),
        "3x3 + 3x3": ((c, 3, 1), (c, 3, 1)),
        "1x3 + 3x1": ((c, (1, 3), (0, 1)), (c, (3, 1), (1, 0))),
        "7x7": ((c, 7, 3),),
        "1x7 + 7x1": ((c, (1, 7), (0, 3)), (c, (7, 1), (3, 0))),
    }
    n = {name: block_cost(_Chain(specs, conv), c, size) for name, specs in built.items()}
    pairs = [
        ("a 5x5 conv vs a 3x3 conv", "5x5", "3x3", "25/9 = 2.78x as expensive (section 3.1)"),
        ("two 3x3 convs vs one 5x5 conv", "3x3 + 3x3", "5x5", "(9+9)/25: 28% cheaper (section 3.1)"),
        ("1x3 + 3x1 vs a 3x3 conv", "1x3 + 3x1", "3x3", "33% cheaper (section 3.2)"),
        ("1x7 + 7x1 vs a 7x7 conv", "1x7 + 7x1", "7x7", "the same saving grows with n (section 3.2)"),
    ]
    return [
        {
            "comparison": what,
            "a": a,
            "b": b,
            "params_a": n[a][0],
            "params_b": n[b][0],
            "macs_a": n[a][1],
            "macs_b": n[b][1],
            "claim": claim,
        }
        for what, a, b, claim in pairs
    ]


def _module_rows() -> list[dict]:
    """Whole modules as our networks build them, at their place in the network at the default input."""
    conv = _conv_factory()
    v3_conv = _conv_factory()
    cfg3a = googlenet.INCEPTION_BLOCKS["inception3a"]
    blocks = {
        # GoogLeNet's inception (3a) on its 28x28x192 input; k=5 is the paper's true 5x5 branch.
        "(3a) reduced, 5x5": (googlenet.Inception(*cfg3a, conv=conv, branch3_kernel=5), 192, 28),
        "(3a) naive, 5x5": (googlenet.Inception(*cfg3a, conv=conv, branch3_kernel=5, naive=True), 192, 28),
        "(3a) reduced, torchvision 3x3": (googlenet.Inception(*cfg3a, conv=conv), 192, 28),
        "(3a) naive, torchvision 3x3": (googlenet.Inception(*cfg3a, conv=conv, naive=True), 192, 28),
        # Inception-v3's Mixed_5b (35x35x192) and Mixed_6b (17x17x768) with and without factorisation.
        "Mixed_5b, 5x5 branch": (inception_v3.InceptionA(32, v3_conv, branch5x5="5x5"), 192, 35),
        "Mixed_5b, 3x3 + 3x3 branch": (inception_v3.InceptionA(32, v3_conv, branch5x5="3x3x2"), 192, 35),
        "Mixed_6b, 1x7 + 7x1": (inception_v3.InceptionC(128, v3_conv, factorize_nxn=True), 768, 17),
        "Mixed_6b, 7x7": (inception_v3.InceptionC(128, v3_conv, factorize_nxn=False), 768, 17),
    }
    n = {name: block_cost(block, ch, size) for name, (block, ch, size) in blocks.items()}
    pairs = [
        (
            "GoogLeNet (3a): naive vs dimension-reduced",
            "(3a) naive, 5x5",
            "(3a) reduced, 5x5",
            "paper Table 1: (3a) costs 128M ops with reductions; Fig. 2a without them",
        ),
        (
            "the same, torchvision's 3x3 third branch",
            "(3a) naive, torchvision 3x3",
            "(3a) reduced, torchvision 3x3",
            'torchvision/TF-slim\'s "5x5" branch is a 3x3 conv',
        ),
        (
            "v3 Mixed_5b: 5x5 branch vs two 3x3",
            "Mixed_5b, 5x5 branch",
            "Mixed_5b, 3x3 + 3x3 branch",
            "Rethinking Fig. 5: the 5x5 replaced by two 3x3",
        ),
        ("v3 Mixed_6b: 7x7 vs 1x7 + 7x1", "Mixed_6b, 7x7", "Mixed_6b, 1x7 + 7x1", "Rethinking Fig. 6"),
    ]
    return [
        {
            "comparison": what,
            "a": a,
            "b": b,
            "params_a": n[a][0],
            "params_b": n[b][0],
            "macs_a": n[a][1],
            "macs_b": n[b][1],
            "claim": claim,
        }
        for what, a, b, claim in pairs
    ]


# Whole networks with one switch flipped, at each variant's default input size.
_SWITCHES = [
    ("googlenet", {"naive": True}, "naive modules (Fig. 2a) everywhere"),
    ("googlenet", {"branch3_kernel": 5}, "the paper's true 5x5 branch"),
    ("bn_inception", {"factorize_5x5": False}, "a 5x5 conv in place of each double 3x3"),
    ("inception_v3", {"inception_a_5x5": "3x3x2"}, "Mixed_5b-5d 5x5 as two 3x3"),
    ("inception_v3", {"factorize_nxn": False}, "nxn convs in place of 1xn + nx1"),
    ("inception_v3", {"factorize_7x7": False}, "the stem's 7x7 unfactorised"),
    ("inception_v4", {"factorize_nxn": False}, "nxn convs in place of 1xn + nx1"),
    ("inception_resnet_v2", {"factorize_nxn": False}, "nxn convs in place of 1xn + nx1"),
]


def _switch_rows(models: list[str]) -> list[dict]:
    rows = []
    for name, switch, what in _SWITCHES:
        if name not in models:
            continue
        size = registry.data_config(name).input_size
        base = model_cost({"name": name}, size, 1000)
        flipped = model_cost({"name": name, **switch}, size, 1000)
        rows.append(
            {
                "model": name,
                "switch": ", ".join(f"{k}={v!r}" for k, v in switch.items()),
                "what": what,
                "size": size,
                "params": base[0],
                "gmacs": base[1],
                "params_switched": flipped[0],
                "gmacs_switched": flipped[1],
            }
        )
    return rows


def _variant_rows(models: list[str]) -> list[dict]:
    rows = []
    for name in models:
        size = registry.data_config(name).input_size
        params, gmacs = model_cost({"name": name}, size, 1000)
        params_aux, _ = model_cost({"name": name, "aux_logits": True}, size, 1000)
        rows.append(
            {
                "model": name,
                "size": size,
                "params": params,
                "gmacs": gmacs,
                "params_aux": params_aux if params_aux != params else None,
            }
        )
    return rows


# --- Markdown -----------------------------------------------------------------------------------------


def _pair_table(rows: list[dict]) -> list[str]:
    out = [
        "| comparison | A | B | MACs A | MACs B | A / B | params A | params B | the paper |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = r["macs_a"] / r["macs_b"]
        out.append(
            f"| {r['comparison']} | {r['a']} | {r['b']} | {r['macs_a']:,} | {r['macs_b']:,} | "
            f"{ratio:.3f} ({_percent(ratio)}) | {r['params_a']:,} | {r['params_b']:,} | {r['claim']} |"
        )
    return out


def _percent(ratio: float) -> str:
    return f"{(1 - ratio) * 100:.1f}% cheaper" if ratio < 1 else f"{ratio:.2f}x"


def markdown(models: list[str] | None = None) -> str:
    models = models or registry.list_models()
    lines = [
        "# The papers' cost claims, counted on our layers",
        "",
        "Generated by `inception-costs` (inception_jax/tools/costs.py). MACs are conv + linear "
        "multiply-accumulates of one forward pass on one image, counted from the traced program of the "
        "layers and modules our networks are built from (`models/profile.py`); parameters include "
        "BatchNorm's scale and offset.",
        "",
        "## Single layers (Rethinking the Inception Architecture, sections 3.1-3.2)",
        "",
        "Conv-BN-ReLU layers (`layers.ConvBN`) on a 35x35x64 input with 64 output filters; in a pair, "
        "both layers have 64 filters.",
        "",
    ]
    lines += _pair_table(_single_layer_rows())
    lines += [
        "",
        "## Modules",
        "",
        "GoogLeNet's inception (3a) on its 28x28x192 input (224 px network input); Inception-v3's "
        "Mixed_5b on 35x35x192 and Mixed_6b on 17x17x768 (299 px). The naive (3a) also outputs "
        "192 more channels (416 instead of 256), so every later module pays again: see the whole "
        "network below.",
        "",
    ]
    lines += _pair_table(_module_rows())
    lines += [
        "",
        "## Whole networks with one switch flipped",
        "",
        "| model | switch | what it does | input | params | GMACs | params switched | GMACs switched | ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in _switch_rows(models):
        lines.append(
            f"| `{r['model']}` | `{r['switch']}` | {r['what']} | {r['size']} | {r['params']:,} | "
            f"{r['gmacs']:.3f} | {r['params_switched']:,} | {r['gmacs_switched']:.3f} | "
            f"{r['gmacs_switched'] / r['gmacs']:.3f} |"
        )
    lines += [
        "",
        "## Every variant",
        "",
        "1000 classes at the default input (the model zoo table of the README, from the same counter). "
        "The study runs' own counts are in their reports.",
        "",
        "| model | input | params | params with aux | GMACs |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in _variant_rows(models):
        aux = f"{r['params_aux']:,}" if r["params_aux"] else "-"
        lines.append(f"| `{r['model']}` | {r['size']} | {r['params']:,} | {aux} | {r['gmacs']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="inception-costs", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="only these variants in the network tables")
    args = parser.parse_args(argv)
    for name in args.models or ():
        try:
            registry.get_entry(name)  # an unknown name fails before any tracing
        except ValueError as e:
            print(f"error: --models {name}: {e}", file=sys.stderr)
            return 2
    print(markdown(args.models), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
