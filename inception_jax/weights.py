"""Saving and loading converted variables as msgpack: a format that cannot carry code, unlike pickle.

A file stores the registered model name, its options and the variables, so `load_variables(path)`
rebuilds the matching module in one call; optionally also the publisher's evaluation preprocessing
(`read_preprocessing`) and one class name per output (`read_class_names`). Files written before those
two existed still load: both read as None (unknown).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import jax
import numpy as np
from flax import serialization

from inception_jax.preprocessing import EvalTransform


def save_variables(
    path: str | os.PathLike,
    variables,
    *,
    model: str,
    options: dict | None = None,
    preprocessing: EvalTransform | dict | None = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """Writes `variables` for registered `model` (built with `options`) to a msgpack file, atomically.

    `preprocessing`: the evaluation transform the weights expect (an `EvalTransform`, its `to_dict()`, or
    None: unknown). `class_names`: one name per output of the classifier (None: unknown).
    """
    payload = {
        "format": "inception_jax.variables.v1",
        "model": model,
        "options": json.dumps(options or {}, sort_keys=True),
        "variables": jax.tree.map(np.asarray, dict(variables)),
    }
    if preprocessing is not None:
        if isinstance(preprocessing, dict):
            preprocessing = EvalTransform.from_dict(preprocessing)  # validates before anything is written
        payload["preprocessing"] = json.dumps(preprocessing.to_dict(), sort_keys=True)
    if class_names is not None:
        names = [str(n) for n in class_names]
        if not names:
            raise ValueError("class_names is empty; pass None when the classes are unknown")
        payload["class_names"] = json.dumps(names)
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
    payload = _read_existing(path)
    return payload["model"], json.loads(payload["options"])


def _read_existing(path: str | os.PathLike) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"weight file {path!r} does not exist; convert one with `inception-convert` (nothing is downloaded)"
        )
    return _read_payload(path)


def _preprocessing(payload: dict, path: str) -> EvalTransform | None:
    if "preprocessing" not in payload:
        return None
    try:
        return EvalTransform.from_dict(json.loads(payload["preprocessing"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path!r} records an unreadable preprocessing: {e}") from None


def _class_names(payload: dict) -> tuple[str, ...] | None:
    return tuple(json.loads(payload["class_names"])) if "class_names" in payload else None


def read_preprocessing(path: str | os.PathLike) -> EvalTransform | None:
    """The evaluation transform recorded in a variables file, or None when it records none (unknown)."""
    return _preprocessing(_read_existing(path), os.fspath(path))


def read_class_names(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The class names recorded in a variables file (one per output), or None when it records none."""
    return _class_names(_read_existing(path))


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """Everything a variables file holds: `load_weights_file(path)`."""

    model: object  # the flax module, built from `name` and `options`
    variables: dict
    name: str
    options: dict
    preprocessing: EvalTransform | None
    class_names: tuple[str, ...] | None


def load_weights_file(path: str | os.PathLike) -> WeightsFile:
    """Reads a variables file once: the module, its variables, and what the file records about them."""
    from inception_jax.models import registry, stacking

    payload = _read_existing(path)
    options = json.loads(payload["options"])
    model = registry.create_model(payload["model"], **options)
    return WeightsFile(
        model=model,
        variables=stacking.to_layout(payload["variables"], model),
        name=payload["model"],
        options=options,
        preprocessing=_preprocessing(payload, os.fspath(path)),
        class_names=_class_names(payload),
    )


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
