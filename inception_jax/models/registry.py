"""Model registry: names -> constructors plus each variant's data defaults, as in timm.

Model files register their variants at import; `inception_jax.models` imports them all, so
`list_models()` sees every variant after `import inception_jax`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

import flax.linen as nn

INCEPTION_MEAN = (0.5, 0.5, 0.5)  # TF "inception" preprocessing: x / 127.5 - 1 (REFERENCES.md §3.1)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How a variant expects its images: what timm calls `pretrained_cfg`."""

    input_size: int = 299
    min_input_size: int = 75
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = INCEPTION_MEAN
    std: tuple[float, float, float] = INCEPTION_STD
    num_classes: int = 1000

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    constructor: Callable[..., nn.Module]
    data: DataConfig
    description: str = ""
    # The outside implementation whose state_dict names the module tree follows ("timm inception_v3").
    torch_reference: str | None = None
    # Hook for the converter: fn(flat_torch_state: dict[str, ndarray]) -> dict, for layout quirks a
    # generic name mapping cannot express (GoogLeNet's aux fc1 flatten order).
    torch_fixup: Callable[[dict], dict] | None = None
    tags: tuple[str, ...] = ()


# The seven networks of the papers (GoogLeNet, BN-Inception, Inception-v2/v3/v4, Inception-ResNet-v1/v2):
# what a study of "the family" sweeps. Other entries (the FID network) do not carry the tag.
FAMILY = "family"

_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    data: DataConfig,
    description: str = "",
    torch_reference: str | None = None,
    torch_fixup: Callable[[dict], dict] | None = None,
    tags: tuple[str, ...] = (),
):
    """Decorator for a function `(**overrides) -> nn.Module` that builds the variant."""

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, fn, data, description, torch_reference, torch_fixup, tuple(tags))
        return fn

    return wrap


def list_models(tag: str | None = None) -> list[str]:
    """Registered names, sorted; with `tag`, only the entries carrying it (e.g. `FAMILY`)."""
    return sorted(n for n, e in _REGISTRY.items() if tag is None or tag in e.tags)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown model name {name!r}.{hint} Known models: {', '.join(list_models())}.")
    return _REGISTRY[name]


def model_options(name: str) -> dict[str, Any]:
    """The options a variant accepts, with their defaults (the module's dataclass fields)."""
    module = get_entry(name).constructor()
    return {
        f.name: getattr(module, f.name)
        for f in dataclasses.fields(module)
        if f.init and f.name not in ("parent", "name")
    }


def create_model(name: str, **overrides) -> nn.Module:
    """Builds a registered variant; `overrides` set any model option (see `model_options(name)`)."""
    entry = get_entry(name)
    options = model_options(name)
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        bad = unknown[0]
        close = difflib.get_close_matches(bad, options, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown option {bad!r} for model {name!r}.{hint} Valid options: {', '.join(sorted(options))}."
        )
    # Options read back from JSON (config.json, weight files) arrive as lists; module fields must hash.
    return entry.constructor(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def data_config(name: str) -> DataConfig:
    """Per-variant input size, crop fraction, interpolation and normalisation."""
    return get_entry(name).data
