"""Repeated identical blocks as one `nn.scan` (`scan_blocks=True`), and weights in either layout.

Inception-v4 repeats its A, B and C blocks 4, 7 and 3 times, Inception-ResNet-v2 its residual blocks
10, 20 and 9 times. Unrolled, XLA compiles every copy; scanned, it compiles one block per stage and
loops over stacked parameters (BENCHMARKS.md has the compile times). The per-block layout names each
block (`repeat_1_7`), as the reference state_dicts and fine-tuning do; the stacked layout holds a stage
under one name (`repeat_1_0-19`) with a leading block axis. `to_layout` converts either into the one a
model uses, so weight files, checkpoints and `init_from` work across the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np


class _ScanStep(nn.Module):
    """One step of a scanned stage: the block (named "block"), with `train` fixed."""

    make_block: Callable[..., nn.Module]
    train: bool

    @nn.compact
    def __call__(self, x, _):
        return self.make_block(name="block")(x, self.train), None


def stacked_name(names: Sequence[str]) -> str:
    """The stacked module's name for blocks `names` (e.g. repeat_1_0 ... repeat_1_19 -> repeat_1_0-19)."""
    return f"{names[0]}-{names[-1].rsplit('_', 1)[-1]}"


def run_blocks(
    make_block: Callable[..., nn.Module],
    names: Sequence[str],
    x,
    train: bool,
    *,
    scan: bool,
    endpoint: Callable = lambda name, x: x,
):
    """Runs the blocks `make_block(name=n)` for `names` in turn, or with `scan` as one `nn.scan` over
    a block whose parameters and BatchNorm statistics are stacked along a leading axis. Call it from
    the parent's compact method. `endpoint(name, x)` sees each block's output (scanned: the last's)."""
    if not scan:
        for name in names:
            x = endpoint(name, make_block(name=name)(x, train))
        return x
    stage = nn.scan(
        _ScanStep,
        variable_axes={"params": 0, "batch_stats": 0},
        split_rngs={"params": True, "dropout": True},
        length=len(names),
    )
    try:
        x_out, _ = stage(make_block, train, name=stacked_name(names))(x, None)
    except TypeError as e:  # JAX: "scan body function carry input and carry output must have equal types"
        if "carry" not in str(e):
            raise
        raise ValueError(
            f"scan_blocks=True: blocks {names[0]}..{names[-1]} do not keep their input's shape {tuple(x.shape[1:])} "
            "at this width_multiplier (each branch's width is scaled and floored on its own, so a block's "
            "concatenated output can differ from what the previous layer gives it); use scan_blocks=False, "
            "or a width_multiplier such as 0.25, 0.5 or 1.0"
        ) from None
    return endpoint(names[-1], x_out)


def to_layout(variables: dict, model: nn.Module) -> dict:
    """`variables` (either layout) in the layout `model` uses: its blocks stacked when
    `model.scan_blocks`, one entry per block otherwise. Models without repeated blocks pass through."""
    groups = model.block_groups() if hasattr(model, "block_groups") else []
    scan = bool(getattr(model, "scan_blocks", False))
    out = dict(variables)
    for collection, tree in variables.items():
        if not isinstance(tree, dict):
            continue
        tree = dict(tree)
        for names in groups:
            name = stacked_name(names)
            if scan and all(n in tree for n in names):
                blocks = [tree.pop(n) for n in names]
                tree[name] = {"block": jax.tree.map(lambda *leaves: np.stack([np.asarray(v) for v in leaves]), *blocks)}
            elif not scan and name in tree:
                stacked = tree.pop(name)["block"]
                for i, n in enumerate(names):
                    tree[n] = jax.tree.map(lambda leaf, i=i: np.asarray(leaf)[i], stacked)
        out[collection] = tree
    return out


def block_names(prefix: str, first: int, count: int) -> list[str]:
    return [f"{prefix}{first + i}" for i in range(count)]
