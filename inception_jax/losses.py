"""Classification losses and counts: label-smoothed cross-entropy, aux-head weighting, top-k.

Weight decay is not here: it is added to the gradient in `optim.make_optimizer` (weight_decay_mode
"l2" or "decoupled"), so the loss reported by the trainer is the data loss only.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def smoothed_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    num_classes: int,
    smoothing: float,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Mean cross-entropy against q' = (1 - eps) * onehot(labels) + eps / K (Rethinking, section 7).

    logits: [B, K] (computed in float32 or wider: bf16 logits are upcast, float64 ones kept); labels: [B]
    integer class ids;
    mask: optional [B], 1 for real examples and 0 for padding; the mean is over unmasked examples
    (0 when all are masked). eps = 0 is plain cross-entropy.
    """
    if logits.shape[-1] != num_classes:
        raise ValueError(f"logits have {logits.shape[-1]} classes but num_classes={num_classes}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing!r}")
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    targets = jax.nn.one_hot(labels, num_classes, dtype=dtype)
    targets = (1.0 - smoothing) * targets + smoothing / num_classes
    per_example = optax.softmax_cross_entropy(logits.astype(dtype), targets)
    return _masked_mean(per_example, mask)


def total_loss(
    logits: jax.Array,
    aux_logits: Sequence[jax.Array],
    labels: jax.Array,
    *,
    num_classes: int,
    label_smoothing: float,
    aux_loss_weights: Sequence[float],
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """main + sum_i w_i * aux_i, each a smoothed cross-entropy with the same labels and smoothing.

    As TF-slim's train_image_classifier (aux loss weight 0.4, label smoothing on the aux head too) and
    GoogLeNet (two heads at 0.3). Returns (loss, parts) with parts = {"main": ..., "aux_0": ..., ...},
    the unweighted per-head losses, in the order of `aux_logits`.
    """
    aux_logits = tuple(aux_logits or ())
    aux_loss_weights = tuple(aux_loss_weights or ())
    if len(aux_logits) != len(aux_loss_weights):
        raise ValueError(
            f"config.aux_loss_weights gives {len(aux_loss_weights)} weight(s) {aux_loss_weights} but the "
            f"model returned {len(aux_logits)} aux head(s)"
        )
    parts = {"main": smoothed_cross_entropy(logits, labels, num_classes, label_smoothing, mask)}
    loss = parts["main"]
    for i, (aux, weight) in enumerate(zip(aux_logits, aux_loss_weights)):
        parts[f"aux_{i}"] = smoothed_cross_entropy(aux, labels, num_classes, label_smoothing, mask)
        loss = loss + weight * parts[f"aux_{i}"]
    return loss, parts


def topk_correct(logits: jax.Array, labels: jax.Array, k: int, mask: jax.Array | None = None) -> jax.Array:
    """How many unmasked examples have their label among the k highest logits (an int32 count).

    Summed counts (not means) let eval add up batches with padding exactly. Ties are broken by
    `jax.lax.top_k` (lower index first).
    """
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"k must be in [1, {logits.shape[-1]}], got {k}")
    _, top = jax.lax.top_k(logits, k)
    hit = jnp.any(top == labels[..., None], axis=-1)
    if mask is not None:
        hit = jnp.logical_and(hit, mask.astype(bool))
    return jnp.sum(hit, dtype=jnp.int32)
