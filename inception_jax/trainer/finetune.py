"""Fine-tuning controls: which parts train (`config.trainable`), frozen BatchNorm (`config.freeze_bn`) and
a lower learning rate for the pretrained backbone (`config.backbone_lr_multiplier`); usage in
docs/training.md. The unit of freezing is a top-level module, in the order the network runs them; the
head is the classifier and any aux head. A frozen block keeps its parameters and, like a Keras layer
with `trainable=False`, its BatchNorm statistics; frozen leaves get no optimizer state, no update and no
computed gradient.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

# Each family's classifier module (REFERENCES.md §3.4's names: torchvision/timm `fc`, timm v4
# `last_linear`, timm IR-v2 `classif`, slim BN-Inception `Logits`); aux heads are `aux1`, `AuxLogits`.
HEAD_MODULES = ("fc", "last_linear", "classif", "Logits")

FROZEN, BACKBONE, HEAD = "frozen", "backbone", "head"


def is_head(name: str) -> bool:
    """True for a top-level module that is a classifier or an auxiliary head."""
    return name in HEAD_MODULES or name.startswith(("aux", "Aux"))


def parse_trainable(value: str) -> tuple[str, Any]:
    """`config.trainable` -> ("all", None) | ("head", None) | ("last", K) | ("names", (name, ...))."""
    text = str(value).strip()
    if text in ("all", "head"):
        return text, None
    if text.startswith("last:"):
        k = text[len("last:") :]
        if not k.isdigit() or int(k) < 1:
            raise ValueError(f"config.trainable={value!r}: 'last:K' takes a whole number K >= 1, e.g. 'last:2'")
        return "last", int(k)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError(f"config.trainable={value!r}: use 'all', 'head', 'last:K' or comma-separated block names")
    return "names", names


def blocks_in_order(model: nn.Module, image_size: int) -> list[str]:
    """The model's top-level non-head modules in the order the network calls them (traced abstractly)."""
    order: list[str] = []

    def record(next_fun, args, kwargs, context):
        path = context.module.path
        if path and path[0] not in order and not is_head(path[0]):
            order.append(path[0])
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((1, image_size, image_size, model.in_channels), jnp.float32)
    with nn.intercept_methods(record):
        shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return [name for name in order if name in shapes["params"]]  # not Dropout and other parameterless ones


@dataclasses.dataclass(frozen=True)
class Plan:
    """What fine-tuning changes in the train step; the default Plan changes nothing."""

    frozen: frozenset[str] = frozenset()
    freeze_bn: bool = False
    backbone_lr_multiplier: float = 1.0

    def label(self, top: str) -> str:
        if top in self.frozen:
            return FROZEN
        return HEAD if is_head(top) else BACKBONE

    def labels(self, params) -> Any:
        """A tree like `params` holding each leaf's group: "frozen", "backbone" or "head"."""
        return jax.tree_util.tree_map_with_path(lambda path, _: self.label(path[0].key), params)

    def zero_frozen(self, grads) -> Any:
        """Frozen leaves' gradients replaced by zeros, so nothing downstream reads them and XLA drops their
        computation; the logged gradient norm and clipping see only the trainable leaves."""
        return jax.tree_util.tree_map_with_path(
            lambda path, g: jnp.zeros_like(g) if self.label(path[0].key) == FROZEN else g, grads
        )

    def wrap(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        """`tx` over the trainable leaves only, frozen leaves set to zero, backbone updates scaled. Without
        frozen blocks or a multiplier it is `tx` itself (`freeze_bn` alone changes no update), so the
        optimizer state keeps the shape of an ordinary run's."""
        if self.frozen:
            # One `tx` over head and backbone together: clipping and the optimizer see every trainable leaf.
            trains = lambda params: jax.tree.map(lambda lab: FROZEN if lab == FROZEN else "train", self.labels(params))
            tx = optax.multi_transform({"train": tx, FROZEN: optax.set_to_zero()}, trains)
        if self.backbone_lr_multiplier != 1.0:
            m = self.backbone_lr_multiplier

            def scale_backbone(updates, params=None):
                del params
                return jax.tree_util.tree_map_with_path(
                    lambda path, u: u * m if self.label(path[0].key) == BACKBONE else u, updates
                )

            tx = optax.chain(tx, optax.stateless(scale_backbone))
        return tx

    def batchnorm_context(self):
        """A context under which BatchNorm layers of frozen blocks (all of them with `freeze_bn`)
        normalise with their running statistics and leave them unchanged, in train mode too, as Keras
        does for `trainable=False` (keras#9214 and #12350 discuss the alternative's pitfalls)."""
        if not (self.frozen or self.freeze_bn):
            return contextlib.nullcontext()

        def hold(next_fun, args, kwargs, context):
            if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
                if self.freeze_bn or context.module.path[0] in self.frozen:
                    kwargs = {**kwargs, "use_running_average": True}
            return next_fun(*args, **kwargs)

        return nn.intercept_methods(hold)


def make_plan(config, model: nn.Module, image_size: int) -> Plan:
    """The Plan for `config`; ValueError naming the field and the valid choices on a bad value."""
    mult = config.get("backbone_lr_multiplier", 1.0)
    if not (isinstance(mult, (int, float)) and mult > 0):
        raise ValueError(
            f"config.backbone_lr_multiplier must be > 0 (1.0: same as the head), got {mult!r}; "
            "to hold the backbone fixed use config.trainable='head'"
        )
    kind, arg = parse_trainable(config.get("trainable", "all"))
    frozen: frozenset[str] = frozenset()
    if kind in ("last", "names") and getattr(model, "scan_blocks", False):
        raise ValueError(
            f"config.trainable={config.get('trainable')!r} picks blocks, but with "
            "config.model.scan_blocks=True each stage's blocks are one module; fine-tune with "
            "scan_blocks=False (init_from loads weights of either layout)"
        )
    if kind != "all":
        blocks = blocks_in_order(model, image_size)
        if kind == "head":
            keep: list[str] = []
        elif kind == "last":
            if arg > len(blocks):
                raise ValueError(
                    f"config.trainable='last:{arg}': {config.model.name} has only {len(blocks)} "
                    f"blocks before its head ({', '.join(blocks)})"
                )
            keep = blocks[-arg:]
        else:
            unknown = [n for n in arg if n not in blocks and not is_head(n)]
            if unknown:
                close = difflib.get_close_matches(unknown[0], blocks, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"config.trainable names {unknown[0]!r}, which is not a block of "
                    f"{config.model.name}.{hint} Blocks: {', '.join(blocks)}"
                )
            keep = list(arg)
        frozen = frozenset(b for b in blocks if b not in keep)
    return Plan(frozen=frozen, freeze_bn=bool(config.get("freeze_bn", False)), backbone_lr_multiplier=float(mult))
