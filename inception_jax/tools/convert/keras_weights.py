"""Keras (`keras.applications`) InceptionV3 / InceptionResNetV2 weight files -> our Flax models.

Keras names most layers by class and a global counter (`conv2d_93`), so no name rule maps them: like
Keras' own loaders we map by the order of `model.layers`, which every file format stores and which is not
the order the application code creates layers in (REFERENCES.md §3.4). `_KerasGraph` writes each
application down op by op and derives that order from the wiring. Files are read with h5py only (no
unpickling, no Keras); anything missing, extra, misplaced or mis-shaped raises `WeightMismatchError`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import zipfile
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from inception_jax.models import registry, stacking
from inception_jax.tools.convert.torch_weights import WeightMismatchError, listing

SUPPORTED = ("inception_v3", "inception_resnet_v2")
_KERAS_CLASS = {"inception_v3": "InceptionV3", "inception_resnet_v2": "InceptionResNetV2"}


def keras_model_options(name: str) -> dict[str, Any]:
    """The options under which our `name` computes Keras' function (REFERENCES.md §3.1, §3.3):
    BatchNorm without gamma, Keras' momentum 0.99 and epsilon 1e-3, average pools that exclude the
    padding ('same' in Keras), and no dropout (Keras' head has none). `num_classes` comes from the file."""
    _check_name(name)
    return dict(
        bn_use_scale=False, bn_momentum=0.99, bn_epsilon=1e-3, avg_pool_count_include_pad=False, dropout_rate=0.0
    )


def _check_name(name: str) -> None:
    if name not in SUPPORTED:
        raise ValueError(
            f"from_keras supports {', '.join(SUPPORTED)} (keras.applications InceptionV3 and "
            f"InceptionResNetV2), got {name!r}"
        )


# ------------------------------------------------------------------ the Keras application graphs


@dataclasses.dataclass(frozen=True)
class _Slot:
    """One Keras layer with weights and where its arrays go in our tree."""

    kind: str  # "conv", "bn" or "dense"
    scope: tuple[str, ...]  # our module path holding its leaves
    keras_name: str | None  # the name the application gives it; None when Keras auto-numbers it


class _KerasGraph:
    """A Keras application written down op by op, in the order its code creates the layers.

    Only the wiring matters (which op feeds which, in argument order), not shapes: enough to know the
    creation order of the weighted layers and the order of `model.layers`.
    """

    def __init__(self):
        self.inputs: list[tuple[int, ...]] = [()]  # op 0: the InputLayer
        self.slots: dict[int, _Slot] = {}

    def op(self, *inputs: int, slot: _Slot | None = None) -> int:
        self.inputs.append(inputs)
        if slot is not None:
            self.slots[len(self.inputs) - 1] = slot
        return len(self.inputs) - 1

    def conv_bn(self, x: int, *scope: str, name: str | None = None) -> int:
        """Keras' `conv2d_bn`: Conv2D -> BatchNormalization -> Activation, onto one of our ConvBN."""
        x = self.op(x, slot=_Slot("conv", (*scope, "conv"), name))
        x = self.op(x, slot=_Slot("bn", (*scope, "bn"), name and f"{name}_bn"))
        return self.op(x)

    def chain(self, x: int, block: str, *names: str) -> int:
        for n in names:
            x = self.conv_bn(x, block, n)
        return x

    def creation_order(self) -> list[_Slot]:
        """The weighted layers as the application's code creates them: the order of Keras' auto-numbered
        names (`conv2d_5` before `conv2d_6`) in a file written from a freshly built model."""
        return [self.slots[i] for i in sorted(self.slots)]

    def keras_layer_order(self) -> list[_Slot]:
        """The weighted layers in `model.layers` order, which Keras' Functional derives from the graph:
        deepest first (depth = longest path to the output), ties broken by when a depth-first walk
        from the output, over each op's inputs in argument order, first reaches the op."""
        output = len(self.inputs) - 1
        first_seen: dict[int, int] = {}
        stack = [output]
        while stack:  # iterative pre-order walk; equals the recursive one (each op numbered once)
            op = stack.pop()
            if op not in first_seen:
                first_seen[op] = len(first_seen)
                stack.extend(reversed(self.inputs[op]))
        depth = {output: 0}
        for op in range(output, -1, -1):  # ids are a topological order: consumers after producers
            if op in depth:
                for src in self.inputs[op]:
                    depth[src] = max(depth.get(src, 0), depth[op] + 1)
        ordered = sorted(first_seen, key=lambda op: (-depth[op], first_seen[op]))
        return [self.slots[op] for op in ordered if op in self.slots]


def _inception_v3_graph() -> _KerasGraph:
    """`keras.applications.InceptionV3` (mixed0..mixed10 = our Mixed_5b..Mixed_7c). Keras creates a
    17x17 block's 7x7 branch whole before its 7x7dbl branch; ours interleaves their first convs."""
    g = _KerasGraph()
    x = g.conv_bn(0, "Conv2d_1a_3x3")
    x = g.conv_bn(x, "Conv2d_2a_3x3")
    x = g.op(g.conv_bn(x, "Conv2d_2b_3x3"))  # max pool
    x = g.conv_bn(x, "Conv2d_3b_1x1")
    x = g.op(g.conv_bn(x, "Conv2d_4a_3x3"))  # max pool
    for b in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        b1 = g.chain(x, b, "branch1x1")
        b5 = g.chain(x, b, "branch5x5_1", "branch5x5_2")
        b3 = g.chain(x, b, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")
        bp = g.conv_bn(g.op(x), b, "branch_pool")  # avg pool -> 1x1
        x = g.op(b1, b5, b3, bp)
    b3 = g.chain(x, "Mixed_6a", "branch3x3")
    bd = g.chain(x, "Mixed_6a", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")
    x = g.op(b3, bd, g.op(x))
    for b in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        b1 = g.chain(x, b, "branch1x1")
        b7 = g.chain(x, b, "branch7x7_1", "branch7x7_2", "branch7x7_3")
        bd = g.chain(x, b, *(f"branch7x7dbl_{i}" for i in range(1, 6)))
        bp = g.conv_bn(g.op(x), b, "branch_pool")
        x = g.op(b1, b7, bd, bp)
    b3 = g.chain(x, "Mixed_7a", "branch3x3_1", "branch3x3_2")
    b7 = g.chain(x, "Mixed_7a", *(f"branch7x7x3_{i}" for i in range(1, 5)))
    x = g.op(b3, b7, g.op(x))
    for b in ("Mixed_7b", "Mixed_7c"):
        b1 = g.chain(x, b, "branch1x1")
        b3 = g.chain(x, b, "branch3x3_1")
        b3 = g.op(g.conv_bn(b3, b, "branch3x3_2a"), g.conv_bn(b3, b, "branch3x3_2b"))  # 1x3 | 3x1
        bd = g.chain(x, b, "branch3x3dbl_1", "branch3x3dbl_2")
        bd = g.op(g.conv_bn(bd, b, "branch3x3dbl_3a"), g.conv_bn(bd, b, "branch3x3dbl_3b"))
        bp = g.conv_bn(g.op(x), b, "branch_pool")
        x = g.op(b1, b3, bd, bp)
    g.op(g.op(x), slot=_Slot("dense", ("fc",), "predictions"))  # global pool -> Dense
    return g


def _inception_resnet_v2_graph() -> _KerasGraph:
    """`keras.applications.InceptionResNetV2`: `block35_i` = our `repeat_{i-1}`, `block17_i` =
    `repeat_1_{i-1}`, `block8_i` = `repeat_2_{i-1}` and `block8_10` = `block8`; branch order as ours."""
    g = _KerasGraph()
    x = g.conv_bn(0, "conv2d_1a")
    x = g.conv_bn(x, "conv2d_2a")
    x = g.op(g.conv_bn(x, "conv2d_2b"))
    x = g.conv_bn(x, "conv2d_3b")
    x = g.op(g.conv_bn(x, "conv2d_4a"))
    b = "mixed_5b"
    b0 = g.chain(x, b, "branch0")
    b1 = g.chain(x, b, "branch1_0", "branch1_1")
    b2 = g.chain(x, b, "branch2_0", "branch2_1", "branch2_2")
    x = g.op(b0, b1, b2, g.conv_bn(g.op(x), b, "branch3_1"))

    def residual(x, scope, keras_block, branches, relu=True):
        up = g.op(g.op(*branches), slot=_Slot("conv", (scope, "conv2d"), f"{keras_block}_conv"))  # biased, no BN
        x = g.op(x, up)  # CustomScaleLayer([x, up])
        return g.op(x) if relu else x

    for i in range(10):
        s = f"repeat_{i}"
        x = residual(
            x,
            s,
            f"block35_{i + 1}",
            [
                g.chain(x, s, "branch0"),
                g.chain(x, s, "branch1_0", "branch1_1"),
                g.chain(x, s, "branch2_0", "branch2_1", "branch2_2"),
            ],
        )
    b0 = g.chain(x, "mixed_6a", "branch0")
    b1 = g.chain(x, "mixed_6a", "branch1_0", "branch1_1", "branch1_2")
    x = g.op(b0, b1, g.op(x))
    for i in range(20):
        s = f"repeat_1_{i}"
        x = residual(
            x, s, f"block17_{i + 1}", [g.chain(x, s, "branch0"), g.chain(x, s, "branch1_0", "branch1_1", "branch1_2")]
        )
    b = "mixed_7a"
    b0 = g.chain(x, b, "branch0_0", "branch0_1")
    b1 = g.chain(x, b, "branch1_0", "branch1_1")
    b2 = g.chain(x, b, "branch2_0", "branch2_1", "branch2_2")
    x = g.op(b0, b1, b2, g.op(x))
    for i in range(10):
        s = f"repeat_2_{i}" if i < 9 else "block8"
        x = residual(
            x,
            s,
            f"block8_{i + 1}",
            [g.chain(x, s, "branch0"), g.chain(x, s, "branch1_0", "branch1_1", "branch1_2")],
            relu=i < 9,
        )
    x = g.conv_bn(x, "conv2d_7b", name="conv_7b")
    g.op(g.op(x), slot=_Slot("dense", ("classif",), "predictions"))
    return g


_GRAPHS = {"inception_v3": _inception_v3_graph, "inception_resnet_v2": _inception_resnet_v2_graph}


# ------------------------------------------------------------------------------ reading the files


@dataclasses.dataclass
class _FileLayer:
    label: str  # how error messages name it: the Keras name, or the h5 path when names are unknown
    kind: str  # "conv", "bn", "dense" or "other"
    arrays: dict[str, np.ndarray]  # role ("kernel", "bias", "gamma", "beta", "moving_mean", ...) -> array
    name: str | None = None  # the Keras layer name, when the file records it
    position: int = 0  # rank among the file's layers of its kind, in `model.layers` order


def read_keras_file(path: str | os.PathLike) -> list[_FileLayer]:
    """The layers with weights of a `.keras` archive, a Keras 3 `.weights.h5` or a legacy Keras HDF5
    file, read with h5py."""
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"weight file {path!r} does not exist; pass the path of a local Keras .keras, "
            ".weights.h5 or .h5 file (inception_jax never downloads weights)"
        )
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "model.weights.h5" not in names:
                raise ValueError(f"{path!r} is a zip archive without model.weights.h5: not a Keras .keras file")
            config = json.loads(archive.read("config.json")) if "config.json" in names else None
            data = archive.read("model.weights.h5")
        with h5py.File(io.BytesIO(data), "r") as f:
            return _read_keras3(f, config)
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path!r} is neither a Keras .keras archive nor an HDF5 weight file")
    with h5py.File(path, "r") as f:
        if _attr_list(f, "layer_names") is not None:
            return _read_legacy(f)
        if "model_weights" in f:
            return _read_legacy(f["model_weights"])
        if "layers" in f:
            return _read_keras3(f, None)
    raise ValueError(
        f"{path!r} is an HDF5 file without Keras weights (no 'layer_names' attribute, "
        "'model_weights' group or 'layers' group)"
    )


def _attr_list(group, name: str) -> list[str] | None:
    """A string-list attribute; Keras splits long ones into `name0`, `name1`, ... (HDF5's 64 KiB limit)."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    elif f"{name}0" in group.attrs:
        chunks, i = [], 0
        while f"{name}{i}" in group.attrs:
            chunks.append(group.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for chunk in chunks for v in np.atleast_1d(chunk)]


def _kind(arrays: dict[str, np.ndarray]) -> str:
    if "moving_mean" in arrays or "moving_variance" in arrays:
        return "bn"
    kernel = arrays.get("kernel")
    if kernel is not None and kernel.ndim == 4:
        return "conv"
    if kernel is not None and kernel.ndim == 2:
        return "dense"
    return "other"


def _read_legacy(group) -> list[_FileLayer]:
    """Keras 2 layout: attribute `layer_names` in `model.layers` order; each layer's group lists its
    `weight_names` (`conv2d_1/kernel:0` in Keras 2, `conv2d/kernel` when Keras 3 writes it)."""
    layers, counts = [], {}
    for name in _attr_list(group, "layer_names"):
        if name not in group:
            raise ValueError(
                f"{group.file.filename!r} lists layer {name!r} but holds no weights for it: a damaged Keras HDF5 file"
            )
        arrays = {}
        for weight in _attr_list(group[name], "weight_names") or []:
            if weight not in group[name]:
                raise ValueError(
                    f"{group.file.filename!r} lists weight {weight!r} of layer {name!r} but does not "
                    "hold it: a damaged Keras HDF5 file"
                )
            role = weight.rsplit("/", 1)[-1].split(":", 1)[0]
            arrays[role] = np.asarray(group[name][weight], np.float32)
        if arrays:
            kind = _kind(arrays)
            counts[kind] = counts.get(kind, -1) + 1
            layers.append(_FileLayer(name, kind, arrays, name, position=counts[kind]))
    return layers


_KERAS3_KINDS = {"conv2d": "conv", "batch_normalization": "bn", "dense": "dense"}
_BN_ROLES = ("gamma", "beta", "moving_mean", "moving_variance")


def _snake_case(class_name: str) -> str:
    """Keras 3 keys a model's layers in `.weights.h5` by class name in snake case (`Conv2D` -> `conv2d`,
    `BatchNormalization` -> `batch_normalization`), numbered `_1`, `_2`, ... in `model.layers` order."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", re.sub(r"\W+", "", class_name))
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def _split_key(key: str) -> tuple[str, int]:
    base, _, num = key.rpartition("_")
    return (base, int(num)) if base and num.isdigit() else (key, 0)


def _read_keras3(f, config: dict | None) -> list[_FileLayer]:
    """Keras 3 layout: `layers/<class key>/vars/<i>`. With a `.keras` archive's config.json, each
    key is matched to its layer's real name and configuration (BatchNorm's `scale`/`center`)."""
    layer_configs: dict[str, dict] = {}
    if config is not None:
        used: dict[str, int] = {}
        for layer in config.get("config", {}).get("layers", []):
            base = _snake_case(layer.get("class_name", ""))
            used[base] = used.get(base, -1) + 1
            layer_configs[base if used[base] == 0 else f"{base}_{used[base]}"] = layer.get("config", {})
    layers = []
    for key in f["layers"]:
        vars_group = f["layers"][key].get("vars")
        if vars_group is None or not len(vars_group):
            continue
        values = [np.asarray(vars_group[str(i)], np.float32) for i in range(len(vars_group))]
        base, _ = _split_key(key)
        kind = _KERAS3_KINDS.get(base, "other")
        layer_config = layer_configs.get(key)
        if kind == "bn":
            if layer_config is not None:
                flags = (layer_config.get("scale", True), layer_config.get("center", True), True, True)
                roles = [r for r, on in zip(_BN_ROLES, flags) if on]
            else:  # no config: 3 arrays are the Keras applications' scale=False BatchNorm
                roles = {4: _BN_ROLES, 3: _BN_ROLES[1:], 2: _BN_ROLES[2:]}.get(len(values), [])
        elif kind in ("conv", "dense"):
            roles = ["kernel", "bias"]
        else:
            roles = []
        roles = list(roles) + [f"vars/{i}" for i in range(len(roles), len(values))]
        arrays = dict(zip(roles, values))
        name = layer_config.get("name") if layer_config is not None else None
        label = name if name else f"layers/{key}"
        layers.append(_FileLayer(label, kind, arrays, name, position=_split_key(key)[1]))
    return layers


# -------------------------------------------------------------------------------------- mapping


_LEAVES = {
    "kernel": ("params", "kernel"),
    "bias": ("params", "bias"),
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
}


def _pair_layers(graph: _KerasGraph, layers: list[_FileLayer]):
    """Matches the file's layers to the graph's slots kind by kind, both in `model.layers` order.

    Returns (pairs, left-over file layers, slots without a layer, misplaced): where the file records
    names, a layer that Keras names (or that takes the place of a named one) must carry that name.
    """
    order = graph.keras_layer_order()
    named = {s.keras_name for s in order if s.keras_name}
    pairs, extra, unmatched, misplaced = [], [layer for layer in layers if layer.kind == "other"], [], []
    for kind in ("conv", "bn", "dense"):
        file_side = sorted((layer for layer in layers if layer.kind == kind), key=lambda layer: layer.position)
        graph_side = [s for s in order if s.kind == kind]
        for layer, slot in zip(file_side, graph_side):
            if layer.name and (slot.keras_name or layer.name in named) and layer.name != slot.keras_name:
                where = f"Keras' {slot.keras_name!r}" if slot.keras_name else f"an unnamed {kind} layer"
                misplaced.append(f"{layer.label} is where {where} belongs ({'/'.join(slot.scope)})")
            pairs.append((layer, slot))
        extra += file_side[len(graph_side) :]
        unmatched += graph_side[len(file_side) :]
    return pairs, extra, unmatched, misplaced


def _file_num_classes(layers: list[_FileLayer]) -> int:
    """The classifier width: the `predictions` Dense (the only Dense in a Keras application); none
    (a file saved with `include_top=False`) means 0."""
    dense = [layer for layer in layers if layer.kind == "dense" and "kernel" in layer.arrays]
    dense = [layer for layer in dense if layer.name == "predictions"] or sorted(dense, key=lambda layer: layer.position)
    return int(dense[0].arrays["kernel"].shape[-1]) if dense else 0


def from_keras(name: str, path: str | os.PathLike, **overrides):
    """`(model, variables)` from a Keras `InceptionV3` / `InceptionResNetV2` weight file, for `name`
    (`inception_v3` or `inception_resnet_v2`).

    `path`: a `.keras` archive, a Keras 3 `.weights.h5`, or a legacy HDF5 file (the keras-applications
    downloads, or a whole model saved as `.h5`). `model` is built with `keras_model_options(name)`, the
    file's class count (0 for `include_top=False`: it returns the pooled features) and `overrides`; it
    returns logits where Keras applies its softmax, on images scaled as Keras' `preprocess_input`
    (`x / 127.5 - 1`). `variables` holds float32 numpy arrays; a misfit raises `WeightMismatchError`.
    """
    _check_name(name)
    layers = read_keras_file(path)
    options = {**keras_model_options(name), "num_classes": _file_num_classes(layers), **overrides}
    wanted = registry.create_model(name, **options)
    # Keras names every block: map onto the per-block layout, then stack if the model scans.
    model = wanted.clone(scan_blocks=False) if getattr(wanted, "scan_blocks", False) else wanted
    size = registry.data_config(name).input_size
    target = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, size, size, model.in_channels), np.float32))
    )
    target = traverse_util.flatten_dict(dict(target))

    graph = _GRAPHS[name]()
    if not options["num_classes"]:  # built without a classifier: Keras' include_top=False
        graph.slots = {op: s for op, s in graph.slots.items() if s.kind != "dense"}
    pairs, extra, unmatched, misplaced = _pair_layers(graph, layers)
    converted, unexpected, mismatched, misfit = (
        {},
        [f"{layer.label}/{r}" for layer in extra for r in layer.arrays],
        [],
        set(),
    )
    for layer, slot in pairs:
        for role, array in layer.arrays.items():
            collection, leaf = _LEAVES.get(role, (None, None))
            leaf_path = (collection, *slot.scope, leaf)
            if leaf_path not in target:
                unexpected.append(f"{layer.label}/{role}")
            elif array.shape != tuple(target[leaf_path].shape):
                mismatched.append(
                    f"{layer.label}/{role} -> {'/'.join(leaf_path)}: file {array.shape}, "
                    f"model expects {tuple(target[leaf_path].shape)}"
                )
                misfit.add(leaf_path)
            else:
                converted[leaf_path] = array
    missing = ["/".join(p) for p in target if p not in converted and p not in misfit]
    if unexpected or missing or mismatched or misplaced:
        counts = _counts(layers), _counts(graph.slots.values())
        raise WeightMismatchError(_report(name, options, counts, unexpected, missing, mismatched, misplaced))
    variables = traverse_util.unflatten_dict(converted)
    return wanted, stacking.to_layout({k: variables.get(k, {}) for k in ("params", "batch_stats")}, wanted)


def _counts(layers) -> dict[str, int]:
    return {k: sum(1 for layer in layers if layer.kind == k) for k in ("conv", "bn")}


def _report(name, options, counts, unexpected, missing, mismatched, misplaced) -> str:
    in_file, want = counts
    hints = [
        f"the file's {in_file['conv']} conv layers are Keras' {_KERAS_CLASS[other]}: import it as {other!r}"
        for other in SUPPORTED
        if other != name and _counts(_GRAPHS[other]().slots.values()) == in_file
    ]
    if not hints and in_file != want:
        hints.append(
            f"the file has {in_file['conv']} conv and {in_file['bn']} BatchNorm layers, Keras' "
            f"{_KERAS_CLASS[name]} has {want['conv']} and {want['bn']}: a truncated file, or another network?"
        )
    if any("predictions" in m for m in mismatched + unexpected) and not hints:
        hints.append("the classifier differs: pass num_classes=<classes in the file>, or leave it to the file")
    hint = ("\n  Hint: " + "; ".join(hints)) if hints else ""
    chosen = {k: v for k, v in options.items() if k not in keras_model_options(name)}
    return (
        f"Keras weights do not fit model {name!r} ({_KERAS_CLASS[name]}) with {chosen}:"
        + listing("unexpected in file", unexpected)
        + listing("missing from file", missing)
        + listing("shape mismatch", mismatched)
        + listing("out of place (Keras names these layers)", misplaced)
        + hint
    )


__all__ = ["SUPPORTED", "from_keras", "keras_model_options", "read_keras_file"]
