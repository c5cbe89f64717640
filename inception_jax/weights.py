"""Saving and loading converted variables as msgpack: a format that cannot carry code, unlike pickle.

The file stores `{"model": name, "options": {...}, "variables": {"params": ..., "batch_stats": ...}}`
so `load_variables(path)` can rebuild the matching module in one call.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import serialization


def save_variables(path: str | os.PathLike, variables, *, model: str, options: dict | None = None) -> None:
    """Writes `variables` for registered `model` (built with `options`) to a msgpack file, atomically."""
    payload = {
        "format": "inception_jax.variables.v1",
        "model": model,
        "options": json.dumps(options or {}, sort_keys=True),
        "variables": jax.tree.map(np.asarray, dict(variables)),
    }
    data = serialization.msgpack_serialize(payload)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _read_payload(path: str) -> dict:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        payload = serialization.msgpack_restore(raw)
    except Exception as e:
        raise ValueError(f"{path!r} is not an inception_jax variables file (msgpack): {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != "inception_jax.variables.v1":
        raise ValueError(
            f"{path!r} is not an inception_jax variables file; write one with "
            "`inception-convert` or `inception_jax.tools.convert.save_variables`"
        )
    return payload


def read_model_spec(path: str | os.PathLike) -> tuple[str, dict]:
    """The registered model name and options a variables file was written for (e.g. Keras weights
    need `bn_use_scale=False`), so a config can build the matching model: `create_model(name, **options)`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"weight file {path!r} does not exist; convert one with `inception-convert` (nothing is downloaded)"
        )
    payload = _read_payload(path)
    return payload["model"], json.loads(payload["options"])


def load_variables(path: str | os.PathLike):
    """Reads a file written by `save_variables` (or `inception-convert`).

    Returns `(model, variables)`: the module built with the stored name and options, and its variables,
    ready for `model.apply(variables, images, train=False)`.
    """
    from inception_jax.models import registry, stacking

    payload = _read_payload(os.fspath(path))
    options = json.loads(payload["options"])
    model = registry.create_model(payload["model"], **options)
    return model, stacking.to_layout(payload["variables"], model)
