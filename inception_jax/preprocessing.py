"""How published weights expect their images, and what their outputs mean; no TensorFlow here.

`EvalTransform` is one publisher's evaluation preprocessing (resize, central crop, uint8, then
`(x / 255 - mean) / std`); `PRESETS` holds every publisher's we convert from, with the values read in
timm, torchvision, Keras and pytorch-fid (REFERENCES.md §10). The TensorFlow that applies one is
`trainer.data.preprocess.eval_transform`, compared with each publisher's code in
tests/test_preprocessing.py. `imagenet_class_names` names ImageNet's classes from installed files.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import functools
import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
RESIZES = ("shorter_side", "square")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision / timm IMAGENET_DEFAULT_MEAN
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # x / 127.5 - 1: TF-slim, Keras' mode="tf", timm's IMAGENET_INCEPTION_*
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """One evaluation preprocessing. Equality compares the values only, not `name`.

    image_size: side of the square the network sees.
    crop_pct: the crop's share of the resized image: the resize target is `floor(image_size / crop_pct)`.
    interpolation: "bilinear", "bicubic" or "nearest".
    mean, std: per channel, in [0, 1] units: the network sees `(x / 255 - mean) / std`.
    resize: "shorter_side" keeps the aspect ratio (timm's crop_mode="center", torchvision's
        `Resize(int)`), then crops the centre; "square" stretches the whole image to a square (Keras'
        `load_img(target_size=...)`, pytorch-fid; timm's crop_mode="squash"), then crops the centre.
    antialias: widen the filter when shrinking, as PIL (and so timm, torchvision, Keras' load_img) does;
        False for pytorch-fid, which resizes with `F.interpolate`.
    name: the preset the values come from (provenance; None for custom values).
    """

    image_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "shorter_side"
    antialias: bool = True
    name: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        def fix(field, value):
            object.__setattr__(self, field, value)

        try:
            fix("image_size", _integer(self.image_size))
            fix("crop_pct", float(self.crop_pct))
            fix("mean", tuple(float(v) for v in self.mean))
            fix("std", tuple(float(v) for v in self.std))
        except (TypeError, ValueError) as e:
            raise ValueError(f"preprocessing: {e}") from None
        if self.image_size < 1:
            raise ValueError(f"preprocessing image_size={self.image_size}; expected a positive number of pixels")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"preprocessing crop_pct={self.crop_pct}; expected 0 < crop_pct <= 1")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"preprocessing interpolation={self.interpolation!r}; expected one of {INTERPOLATIONS}")
        if self.resize not in RESIZES:
            raise ValueError(f"preprocessing resize={self.resize!r}; expected one of {RESIZES}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"preprocessing mean={self.mean}, std={self.std}; expected 3 values each (RGB)")
        if min(self.std) <= 0.0:
            raise ValueError(f"preprocessing std={self.std}; every value must be > 0")
        if not isinstance(self.antialias, bool):
            raise ValueError(f"preprocessing antialias={self.antialias!r}; expected true or false")

    @property
    def scale_size(self) -> int:
        """The resize target before the central crop: `floor(image_size / crop_pct)`, as timm computes it."""
        return math.floor(self.image_size / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EvalTransform:
        """The inverse of `to_dict`; unknown or missing fields are an error that names them."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"preprocessing has unknown field(s) {unknown}; known: {sorted(fields)}")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(values))
        if missing:
            raise ValueError(f"preprocessing lacks field(s) {missing}")
        return cls(**values)

    def describe(self) -> str:
        """One line for people, e.g. "timm/inception_v3.tf_in1k: shorter side to 341, central 299x299 crop
        (crop_pct 0.875), bicubic, mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5)"."""
        s, n = self.scale_size, self.image_size
        if self.resize == "shorter_side":
            geometry = f"shorter side to {s}, central {n}x{n} crop (crop_pct {self.crop_pct:.4g})"
        else:
            geometry = f"whole image to {s}x{s}" + (f", central {n}x{n} crop" if s != n else "")
        aa = "" if self.antialias else " without antialiasing"
        text = f"{geometry}, {self.interpolation}{aa}, mean {_short(self.mean)}, std {_short(self.std)}"
        return f"{self.name}: {text}" if self.name else text

    def config_fields(self) -> dict[str, Any]:
        """The trainer's `config.input` fields that make its eval pipeline apply this transform."""
        return {
            "image_size": self.image_size,
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": self.mean,
            "std": self.std,
            "eval_resize": self.resize,
            "eval_antialias": self.antialias,
        }


def _integer(value) -> int:
    if isinstance(value, bool) or float(value) != int(value):
        raise ValueError(f"image_size={value!r} is not a whole number")
    return int(value)


def _short(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def normalize(images, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 pixels -> float32 `(x / 255 - mean) / std`, the formula of the trainer
    (`train.normalise_images`) and of `preprocess.normalize`."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    return (np.asarray(images).astype(np.float32) / np.float32(255.0) - mean) / std


# --- Presets ------------------------------------------------------------------------------------------
# Each value below was read from the installed package named in the comment (REFERENCES.md §10 gives the
# files). `model` is our registry name the weights convert to; `framework` what `inception-convert`
# reads them with.


@dataclasses.dataclass(frozen=True)
class Preset:
    transform: EvalTransform
    model: str
    framework: str  # "torch" or "keras": the `inception-convert --from` that reads these weights
    source: str  # where the values were read, for people


def _timm(tag: str, *, crop_pct: float = 0.875, mean=INCEPTION_MEAN, std=INCEPTION_STD) -> tuple[str, Preset]:
    # timm 1.0.31 `pretrained_cfg` of `tag`: input 299, crop_mode "center", interpolation "bicubic".
    name = f"timm/{tag}"
    transform = EvalTransform(299, crop_pct, "bicubic", mean, std, name=name)
    return name, Preset(transform, tag.split(".")[0], "torch", f"timm {tag} pretrained_cfg")


def _torchvision(model: str, crop: int, resize: int) -> tuple[str, Preset]:
    # torchvision 0.29.1 `*_Weights.IMAGENET1K_V1.transforms()`: `ImageClassification(crop_size, resize_size)`,
    # bilinear with antialiasing, ImageNet mean/std; the model's `transform_input=True` (set with these
    # weights) then maps that to (x - 0.5) / 0.5, which our models take directly.
    name = f"torchvision/{model}"
    transform = EvalTransform(crop, crop / resize, "bilinear", INCEPTION_MEAN, INCEPTION_STD, name=name)
    assert transform.scale_size == resize, (model, transform.scale_size)
    return name, Preset(transform, model, "torch", f"torchvision {model} IMAGENET1K_V1 transforms() + transform_input")


def _keras(model: str) -> tuple[str, Preset]:
    # Keras 3: `keras.applications.<model>.preprocess_input` is mode "tf" (x / 127.5 - 1); Keras defines no
    # crop; its examples load images with `keras.utils.load_img(path, target_size=(299, 299))`, which
    # stretches the whole image (PIL resize). We take bilinear, as `image_dataset_from_directory` does.
    name = f"keras/{model}"
    transform = EvalTransform(299, 1.0, "bilinear", INCEPTION_MEAN, INCEPTION_STD, resize="square", name=name)
    return name, Preset(transform, model, "keras", f"keras.applications.{model}.preprocess_input + load_img")


_PYTORCH_FID = EvalTransform(
    299, 1.0, "bilinear", INCEPTION_MEAN, INCEPTION_STD, resize="square", antialias=False, name="pytorch-fid"
)  # pytorch-fid 0.3.0 InceptionV3.forward: F.interpolate(299, bilinear, align_corners=False), then 2x - 1

PRESETS: dict[str, Preset] = dict(
    [
        _timm("inception_v3.tv_in1k"),
        _timm("inception_v3.tf_in1k"),
        _timm("inception_v3.tf_adv_in1k"),
        _timm("inception_v3.gluon_in1k", mean=IMAGENET_MEAN, std=IMAGENET_STD),
        _timm("inception_v4.tf_in1k"),
        _timm("inception_resnet_v2.tf_in1k", crop_pct=0.8975),
        _timm("inception_resnet_v2.tf_ens_adv_in1k", crop_pct=0.8975),
        _torchvision("inception_v3", 299, 342),
        _torchvision("googlenet", 224, 256),
        _keras("inception_v3"),
        _keras("inception_resnet_v2"),
        ("pytorch-fid", Preset(_PYTORCH_FID, "fid_inception_v3", "torch", "pytorch-fid InceptionV3.forward")),
    ]
)


def preset(name: str) -> EvalTransform:
    """The transform of preset `name` (see `PRESETS`); an unknown name is an error listing the known ones."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown preprocessing preset {name!r}.{hint} Known: {', '.join(PRESETS)}")
    return PRESETS[name].transform


def presets_for(model: str, framework: str) -> list[str]:
    """The presets of weights that `inception-convert --from framework --model model` reads."""
    return [name for name, p in PRESETS.items() if p.model == model and p.framework == framework]


# --- ImageNet class names -----------------------------------------------------------------------------


def _package_dir(package: str) -> str | None:
    """A package's folder without importing it (importing timm would import torch)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


@functools.cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet IDs in class-index order (sorted: the order of timm, torchvision,
    Keras and TFDS), from TFDS's `imagenet2012` label file, which tensorflow_datasets ships."""
    root = _package_dir("tensorflow_datasets")
    path = os.path.join(root or "", "datasets", "imagenet2012", "labels.txt")
    if root is None or not os.path.isfile(path):
        raise FileNotFoundError(
            f"ImageNet's class list is not where tensorflow_datasets keeps it ({path}); reinstall tensorflow-datasets"
        )
    with open(path) as f:
        synsets = tuple(line.strip() for line in f if line.strip())
    if len(synsets) != 1000:
        raise ValueError(f"{path} lists {len(synsets)} classes, expected ImageNet-1k's 1000")
    return synsets


@functools.cache
def _synset_lemmas() -> dict[str, str]:
    """WordNet ID -> first lemma ("n01440764" -> "tench"), from timm's `imagenet_synset_to_lemma.txt`
    when timm is installed (read as a file: timm is not imported); empty otherwise."""
    root = _package_dir("timm")
    path = os.path.join(root or "", "data", "_info", "imagenet_synset_to_lemma.txt")
    if root is None or not os.path.isfile(path):
        return {}
    lemmas = {}
    with open(path) as f:
        for line in f:
            synset, _, text = line.rstrip("\n").partition("\t")
            lemmas[synset] = text.split(",")[0].strip()
    return lemmas


def imagenet_class_names(num_classes: int = 1000) -> tuple[str, ...] | None:
    """ImageNet's class names for a 1000-way classifier, or 1001-way (TF-slim: "background" at 0, the
    1000 classes shifted by one); None for any other size.

    A name is the class's first WordNet lemma ("tench", "goldfish") when timm's lemma file is installed,
    else its WordNet ID ("n01440764"). Two classes share a first lemma ("crane", "maillot"); those
    carry their WordNet ID in brackets so every name is unique.
    """
    if num_classes not in (1000, 1001):
        return None
    synsets = imagenet_synsets()
    lemmas = _synset_lemmas()
    names = [lemmas.get(s, s) for s in synsets]
    repeated = {n for n, count in collections.Counter(names).items() if count > 1}
    names = [f"{n} ({s})" if n in repeated else n for n, s in zip(names, synsets)]
    return tuple(["background"] + names if num_classes == 1001 else names)
