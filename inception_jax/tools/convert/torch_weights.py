"""PyTorch (timm / torchvision) state_dicts -> Flax variables, by name.

Our module trees are named after the reference state_dict paths, so one rule set maps every variant
(REFERENCES.md §3.4): `a.b.0.conv.weight` -> `params/a/b_0/conv/kernel` (numeric Sequential indices join
the previous name with `_`), conv kernels OIHW -> HWIO, dense kernels transposed, BN running stats into
`batch_stats`, `num_batches_tracked` dropped. Layout quirks a name rule cannot express go through the
registry's `torch_fixup` hook. Every key is accounted for: missing, unexpected or mis-shaped tensors
raise `WeightMismatchError` listing them all, never a silent partial load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from inception_jax.models import registry, stacking

_DROPPED_SUFFIXES = ("num_batches_tracked",)


class WeightMismatchError(ValueError):
    """The weights do not fit the model; the message lists every offending key."""


def load_torch_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Reads a `.safetensors` / `.pth` file (or takes a mapping) as float numpy arrays.

    `.pth` files go through PyTorch's weights-only unpickler, which refuses any pickle that would
    construct arbitrary objects (and so run code). Nested checkpoints (`{"state_dict": ...}`,
    `{"model": ...}`) are unwrapped, and a DataParallel `module.` prefix is stripped.
    """
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"weight file {path!r} does not exist; pass the path of a local "
                ".safetensors or .pth file (inception_jax never downloads weights)"
            )
        if path.endswith(".safetensors"):
            from safetensors.numpy import load_file

            state = load_file(path)
        else:
            state = _load_pth(path)
    for wrapper in ("state_dict", "model", "model_state_dict", "module"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = dict(state[wrapper])
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return {k: _to_numpy(v) for k, v in state.items() if not k.endswith(_DROPPED_SUFFIXES)}


def _load_pth(path: str) -> dict:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only without the test extra
        raise ImportError(
            f"reading {path!r} needs PyTorch (pip install torch); or convert it to .safetensors first"
        ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError with its own long text
        raise ValueError(
            f"refusing to load {path!r}: it is not a plain tensor checkpoint that PyTorch's weights-only "
            f"loader accepts ({type(e).__name__}: {str(e).splitlines()[0]}). Weight files are untrusted "
            "input and are never unpickled with code execution; re-save it as a plain state_dict or "
            ".safetensors."
        ) from None


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def torch_key_to_flax_path(key: str, ndim: int) -> tuple[str, ...]:
    """`Mixed_5b.branch1x1.conv.weight` -> ('params', 'Mixed_5b', 'branch1x1', 'conv', 'kernel')."""
    parts: list[str] = []
    for seg in key.split("."):
        if seg.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{seg}"
        else:
            parts.append(seg)
    *scope, leaf = parts
    if leaf == "running_mean":
        return ("batch_stats", *scope, "mean")
    if leaf == "running_var":
        return ("batch_stats", *scope, "var")
    if leaf == "weight":
        return ("params", *scope, "kernel" if ndim >= 2 else "scale")
    return ("params", *scope, leaf)


def torch_array_to_flax(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # OIHW -> HWIO
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    if value.ndim == 2:  # Linear (out, in) -> Dense (in, out)
        return np.ascontiguousarray(value.T)
    return value


def from_torch(name: str, source, *, drop_aux: bool = False, **model_overrides) -> dict:
    """Converts a timm/torchvision state_dict for registered model `name` into Flax `variables`.

    `source`: a `.safetensors` or `.pth` path, or a state_dict mapping. `model_overrides` are the
    options the weights were trained with (e.g. `aux_logits=True`, `num_classes=10`); the result is
    checked leaf by leaf against `create_model(name, **model_overrides)`. `drop_aux=True` discards aux
    head tensors when the model is built without aux heads (timm's `tv_in1k` carries them).
    Returns `{"params": ..., "batch_stats": ...}` of float32 numpy arrays.
    """
    entry = registry.get_entry(name)
    wanted = registry.create_model(name, **model_overrides)
    # The state_dict names every block: map onto the per-block layout, then stack if the model scans.
    model = wanted.clone(scan_blocks=False) if getattr(wanted, "scan_blocks", False) else wanted
    state = load_torch_state_dict(source)
    if entry.torch_fixup is not None:
        state = entry.torch_fixup(state)

    size = entry.data.input_size
    target = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, size, size, model.in_channels), np.float32))
    )
    target = traverse_util.flatten_dict(dict(target))
    if drop_aux:
        state = {k: v for k, v in state.items() if not _is_aux_key(k)}

    converted, unexpected, mismatched, seen = {}, [], [], set()
    for key, value in state.items():
        path = torch_key_to_flax_path(key, value.ndim)
        if path not in target:
            unexpected.append(key)
            continue
        seen.add(path)
        array = torch_array_to_flax(value).astype(np.float32)
        want = tuple(target[path].shape)
        if array.shape != want:
            mismatched.append(f"{key}: file {tuple(value.shape)} -> {array.shape}, model expects {want}")
            continue
        converted[path] = array
    missing = ["/".join(p) for p in target if p not in seen]

    if unexpected or missing or mismatched:
        raise WeightMismatchError(_mismatch_report(name, model_overrides, unexpected, missing, mismatched))
    variables = traverse_util.unflatten_dict(converted)
    return stacking.to_layout({k: variables.get(k, {}) for k in ("params", "batch_stats")}, wanted)


def _is_aux_key(key: str) -> bool:
    head = key.split(".", 1)[0]
    return head.lower().startswith("aux")


def listing(title: str, items: list[str]) -> str:
    """One section of a mismatch report: a title with the count, then up to 20 of the items."""
    if not items:
        return ""
    shown = "\n    ".join(items[:20])
    more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
    return f"\n  {title} ({len(items)}):\n    {shown}{more}"


def _mismatch_report(name, overrides, unexpected, missing, mismatched) -> str:
    hints = []
    if any(_is_aux_key(k) for k in unexpected):
        hints.append("the file has aux-head weights: pass aux_logits=True, or drop_aux=True to discard them")
    if any(p.split("/")[1].lower().startswith("aux") for p in missing):
        hints.append("the model has aux heads the file lacks: pass aux_logits=False")
    if any(("fc" in m or "classif" in m or "last_linear" in m) for m in mismatched):
        hints.append("the classifier size differs: pass num_classes=<classes in the file>")
    if unexpected and missing and not hints:
        hints.append(f"is this file really a {name!r} checkpoint? see list_models() for other variants")
    hint = ("\n  Hint: " + "; ".join(hints)) if hints else ""
    return (
        f"weights do not fit model {name!r} with options {overrides or '{}'}:"
        + listing("unexpected in file", unexpected)
        + listing("missing from file", missing)
        + listing("shape mismatch", mismatched)
        + hint
    )
