"""The eval-mode forward pass as an ONNX graph, translated from its jaxpr one primitive at a time.

`translate(forward, variables, spec)` traces `forward(variables, images)` with `jax.make_jaxpr` at the
spec's symbolic batch size, computes while translating every value that does not depend on the images
(the weights and what is derived from them become initializers), and emits ONNX nodes for the rest.
Values with a feature axis are kept channels-first, the layout of ONNX's Conv and pools. `PRIMITIVES`
lists what is translated; any other primitive raises `TranslationError` naming it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import string

import jax
import numpy as np
import onnx
from jax.extend import core as jax_core
from onnx import helper, numpy_helper

OPSET = 21  # onnxruntime >= 1.20 runs all of it
IR_VERSION = 10  # the IR version that opset 21 came with
# The dtypes a translated graph may compute in: the model's float32, its uint8 input, and what
# comparisons and shapes need. Lower-precision programs (dtype=bfloat16) are refused by name.
DTYPES = tuple(np.dtype(t) for t in (np.float32, np.uint8, np.int32, np.int64, np.bool_))
_LONG = 2**62  # an end index past any axis (ONNX Slice clamps it)


class TranslationError(ValueError):
    """A program this module cannot express in ONNX; the message names the primitive or dtype."""


# --- values -------------------------------------------------------------------------------------------

Layout = tuple[int, ...]  # the ONNX tensor is np.transpose(jax_value, layout): ONNX axis i is JAX axis layout[i]


@dataclasses.dataclass(eq=False)
class _Value:
    """One JAX value: known while translating (`const`, in JAX's layout) or computed by the graph, in
    one or more layouts (`names`: layout -> ONNX tensor name; the first is the one it was made in)."""

    shape: tuple
    dtype: np.dtype
    const: np.ndarray | None = None
    names: dict[Layout, str] = dataclasses.field(default_factory=dict)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def layout(self) -> Layout:
        """The layout the graph computes this value in (JAX's own for a constant)."""
        return next(iter(self.names)) if self.const is None else _identity(self.rank)


def _constant(array, dtype=None) -> _Value:
    array = np.asarray(array, dtype=dtype)
    return _Value(tuple(array.shape), array.dtype, const=array)


def _identity(rank: int) -> Layout:
    return tuple(range(rank))


def _static(shape) -> bool:
    return all(isinstance(d, (int, np.integer)) for d in shape)


def _same_dim(a, b) -> bool:
    if isinstance(a, (int, np.integer)) or isinstance(b, (int, np.integer)):
        return isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)) and int(a) == int(b)
    return str(a) == str(b)  # two symbolic sizes: equal when written the same


def _without(layout: Layout, removed) -> Layout:
    """The layout left when JAX axes `removed` go away (the remaining axes renumbered)."""
    kept = [a for a in layout if a not in removed]
    order = sorted(kept)
    return tuple(order.index(a) for a in kept)


def _checked(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in DTYPES:
        kinds = ", ".join(d.name for d in DTYPES)
        raise TranslationError(f"the program computes in {dtype.name}; ONNX export translates only {kinds}")
    return dtype


def _where(eqn) -> str:
    stack = str(getattr(eqn.source_info, "name_stack", "") or "")
    return f" (in {stack})" if stack else ""


# --- the translator -----------------------------------------------------------------------------------


class _Translator:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.symbols: dict[str, tuple[str, int]] = {}  # symbolic size -> (input tensor, axis) that has it
        self._ids = itertools.count()
        self._ints: dict[tuple[int, ...], str] = {}
        self._scalars: dict[tuple[str, bytes], str] = {}

    # Emitting.

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._ids)}"

    def node(self, op: str, inputs, **attrs) -> str:
        out = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def initializer(self, array: np.ndarray, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, order="C"), name))
        return name

    def ints(self, values) -> str:
        """A 1-D int64 initializer (axes, shapes, pads), shared by every node that needs the same."""
        key = tuple(int(v) for v in values)
        if key not in self._ints:
            self._ints[key] = self.initializer(np.asarray(key, np.int64), "ints")
        return self._ints[key]

    def scalar(self, value, dtype) -> str:
        """A 0-d initializer, shared by every node that needs the same number."""
        array = np.asarray(value, dtype)
        key = (array.dtype.str, array.tobytes())
        if key not in self._scalars:
            self._scalars[key] = self.initializer(array, "scalar")
        return self._scalars[key]

    def tensor(self, value: _Value, layout: Layout) -> str:
        """The ONNX tensor holding `value` in `layout`: an initializer, or a Transpose of one it has."""
        layout = tuple(layout)
        if layout not in value.names:
            if value.const is not None and value.rank == 0:
                value.names[layout] = self.scalar(value.const, value.dtype)
            elif value.const is not None:
                value.names[layout] = self.initializer(np.transpose(value.const, layout))
            else:
                have = value.layout
                perm = [have.index(a) for a in layout]
                value.names[layout] = self.node("Transpose", [value.names[have]], perm=perm)
        return value.names[layout]

    def result(self, var, name: str, layout: Layout) -> _Value:
        """The value of JAX variable `var`, computed by the graph as tensor `name` in `layout`."""
        return _Value(tuple(var.aval.shape), _checked(var.aval.dtype), names={tuple(layout): name})

    def shared_layout(self, values, rank: int) -> Layout:
        """The layout an elementwise operation works in: the first computed operand's channels-first
        layout when there is one (constants are transposed for free)."""
        layouts = [v.layout for v in values if v.const is None and v.rank == rank]
        for layout in layouts:
            if layout != _identity(rank):
                return layout
        return _identity(rank)

    def dims(self, dims) -> str:
        """A 1-D int64 tensor of sizes, some of which may be symbolic (read from the input's shape)."""
        if _static(dims):
            return self.ints(dims)
        pieces = []
        for d in dims:
            if isinstance(d, (int, np.integer)):
                pieces.append(self.ints([d]))
            elif str(d) in self.symbols:
                source, axis = self.symbols[str(d)]
                pieces.append(self.node("Shape", [source], start=axis, end=axis + 1))
            else:
                raise TranslationError(f"a size of {d} (not one of the input's sizes) has no ONNX translation")
        return self.node("Concat", pieces, axis=0)

    def reshape_dims(self, old, new) -> list[int] | str:
        """Reshape's target: static sizes as they are, a symbolic one as 0 (same as the input's size
        at that index) or -1 (whatever is left), else a tensor computed from the input's shape."""
        out, inferred = [], False
        for i, d in enumerate(new):
            if isinstance(d, (int, np.integer)):
                if d == 0:
                    raise TranslationError("a reshape to an empty shape has no ONNX translation")
                out.append(int(d))
            elif i < len(old) and _same_dim(old[i], d):
                out.append(0)
            elif not inferred:
                out.append(-1)
                inferred = True
            else:
                return self.dims(new)
        return out

    # Walking the program.

    def run(self, jaxpr, consts, args: list[_Value]) -> list[_Value]:
        env: dict = {}

        def read(atom) -> _Value:
            if isinstance(atom, jax_core.Literal):
                return _constant(atom.val, atom.aval.dtype)
            return env[atom]

        for var, const in zip(jaxpr.constvars, consts, strict=True):
            env[var] = _constant(const, var.aval.dtype)
        for var, arg in zip(jaxpr.invars, args, strict=True):
            env[var] = arg
        for eqn in jaxpr.eqns:
            outs = self.equation(eqn, [read(a) for a in eqn.invars])
            for var, out in zip(eqn.outvars, outs, strict=True):
                if not isinstance(var, jax_core.DropVar):
                    env[var] = out
        return [read(a) for a in jaxpr.outvars]

    def equation(self, eqn, values: list[_Value]) -> list[_Value]:
        name = eqn.primitive.name
        if name in _CALLS:
            closed = next(eqn.params[k] for k in _CALLS[name] if k in eqn.params)
            if isinstance(closed, jax_core.ClosedJaxpr):
                return self.run(closed.jaxpr, closed.consts, values)
            return self.run(closed, (), values)
        if name == "scan":
            return _scan(self, eqn, values)
        if all(v.const is not None for v in values) and all(_static(v.aval.shape) for v in eqn.outvars):
            return self.fold(eqn, values)
        rule = _RULES.get(name)
        if rule is None:
            raise TranslationError(f"the primitive {name!r} has no ONNX translation{_where(eqn)}")
        try:
            return rule(self, eqn, values)
        except TranslationError as e:
            raise TranslationError(f"{name}: {e}{_where(eqn)}") from None

    def fold(self, eqn, values: list[_Value]) -> list[_Value]:
        """Computes an equation whose operands are all known: with NumPy where that is the same
        arithmetic (a compile per shape for a few hundred BatchNorm constants adds up), else eagerly
        with JAX on the CPU."""
        args = [v.const for v in values]
        name = eqn.primitive.name
        if name in _NUMPY_MOVES or (name in _NUMPY_FLOAT and all(a.dtype.kind == "f" for a in args)):
            outs = [{**_NUMPY_MOVES, **_NUMPY_FLOAT}[name](eqn.params, *args)]
        else:
            with jax.default_device(jax.local_devices(backend="cpu")[0]):
                outs = eqn.primitive.bind(*args, **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        return [_constant(np.asarray(o), var.aval.dtype) for o, var in zip(outs, eqn.outvars, strict=True)]

    def index(self, value: _Value, i: int) -> _Value:
        """value[i] along JAX's axis 0 (a scanned operand's step)."""
        if value.const is not None:
            return _constant(value.const[i])
        layout = value.layout
        name = self.node("Gather", [value.names[layout], self.scalar(i, np.int64)], axis=layout.index(0))
        return _Value(value.shape[1:], value.dtype, names={_without(layout, {0}): name})

    def stack(self, values: list[_Value], var) -> _Value:
        """np.stack(values) along a new axis 0 (a scan's stacked outputs)."""
        if all(v.const is not None for v in values):
            return _constant(np.stack([v.const for v in values]), var.aval.dtype)
        rows = [self.node("Unsqueeze", [self.tensor(v, _identity(v.rank)), self.ints([0])]) for v in values]
        return self.result(var, self.node("Concat", rows, axis=0), _identity(len(var.aval.shape)))


def _broadcast(params, x):
    shape, kept = params["shape"], params["broadcast_dimensions"]
    middle = [x.shape[kept.index(i)] if i in kept else 1 for i in range(len(shape))]
    return np.broadcast_to(x.reshape(middle), shape)


# What folding computes with NumPy: moving data, and elementwise float arithmetic (rounded the same).
_NUMPY_MOVES = {
    "reshape": lambda p, x: x.reshape(p["new_sizes"]),
    "squeeze": lambda p, x: np.squeeze(x, tuple(p["dimensions"])),
    "transpose": lambda p, x: np.transpose(x, p["permutation"]),
    "broadcast_in_dim": _broadcast,
}
_NUMPY_FLOAT = {
    "add": lambda p, x, y: np.add(x, y),
    "sub": lambda p, x, y: np.subtract(x, y),
    "mul": lambda p, x, y: np.multiply(x, y),
    "div": lambda p, x, y: np.divide(x, y),
    "max": lambda p, x, y: np.maximum(x, y),
    "min": lambda p, x, y: np.minimum(x, y),
    "neg": lambda p, x: np.negative(x),
    "sqrt": lambda p, x: np.sqrt(x),
    "rsqrt": lambda p, x: np.reciprocal(np.sqrt(x)),
    "square": lambda p, x: np.square(x),
    "convert_element_type": lambda p, x: x.astype(p["new_dtype"]),
}


# Primitives that call a sub-program with the same operands, and the parameter that holds it.
_CALLS = {
    "jit": ("jaxpr",),
    "pjit": ("jaxpr",),
    "closed_call": ("call_jaxpr",),
    "core_call": ("call_jaxpr",),
    "custom_jvp_call": ("call_jaxpr",),
    "custom_vjp_call": ("call_jaxpr", "fun_jaxpr"),
    "custom_vjp_call_jaxpr": ("fun_jaxpr",),
    "checkpoint": ("jaxpr",),
    "remat": ("jaxpr",),
    "remat2": ("jaxpr",),
}


# --- rules: one per primitive, (translator, equation, operands) -> results ------------------------------


def _elementwise(*ops: str, twice: bool = False):
    """`ops` applied in turn (the first to every operand, the rest to the previous result); `twice`:
    the one operand passed twice (x * x)."""

    def rule(tr: _Translator, eqn, values):
        (out,) = eqn.outvars
        rank = len(out.aval.shape)
        if any(v.rank not in (0, rank) for v in values):
            raise TranslationError(f"operands of ranks {[v.rank for v in values]}")
        layout = tr.shared_layout(values, rank)
        names = [tr.tensor(v, layout if v.rank else ()) for v in values]
        name = tr.node(ops[0], names * 2 if twice else names)
        for op in ops[1:]:
            name = tr.node(op, [name])
        return [tr.result(out, name, layout)]

    return rule


def _sub(tr, eqn, values):
    """x - c as x + (-c), the same number, which onnxruntime folds into a preceding Conv's bias."""
    x, y = values
    if y.const is not None and x.const is None:
        return _elementwise("Add")(tr, eqn, [x, _constant(np.negative(y.const))])
    return _elementwise("Sub")(tr, eqn, values)


def _max(tr, eqn, values):
    """max(x, 0) as Relu, which onnxruntime fuses into a preceding Conv."""
    x, y = values if values[1].const is not None else values[::-1]
    if y.const is not None and x.const is None and y.rank == 0 and y.const == 0:
        return _elementwise("Relu")(tr, eqn, [x])
    return _elementwise("Max")(tr, eqn, values)


def _logical(op: str):
    """and / or / not of booleans (on integers they are bitwise, which is not translated)."""

    def rule(tr, eqn, values):
        if any(v.dtype != np.bool_ for v in values):
            raise TranslationError("only booleans have an ONNX translation")
        return _elementwise(op)(tr, eqn, values)

    return rule


def _integer_pow(tr, eqn, values):
    y = eqn.params["y"]
    if y == 2:
        return _elementwise("Mul", twice=True)(tr, eqn, values)
    (x,) = values
    exponent = _constant(np.asarray(y, x.dtype))
    return _elementwise("Pow")(tr, eqn, [x, exponent])


def _convert_element_type(tr, eqn, values):
    (x,) = values
    (out,) = eqn.outvars
    dtype = np.dtype(out.aval.dtype)
    if dtype == x.dtype:
        return [x]
    layout = x.layout
    to = helper.np_dtype_to_tensor_dtype(_checked(dtype))
    return [tr.result(out, tr.node("Cast", [tr.tensor(x, layout)], to=to), layout)]


def _select_n(tr, eqn, values):
    which, *cases = values
    if len(cases) != 2 or which.dtype != np.bool_:
        raise TranslationError("only a choice between two cases by a boolean has an ONNX translation")
    return _elementwise("Where")(tr, eqn, [which, cases[1], cases[0]])


def _copy(tr, eqn, values):
    return list(values)


def _reshape(tr, eqn, values):
    x, *rest = values
    if rest or eqn.params.get("dimensions") is not None:
        raise TranslationError("a reshape with dynamic sizes or a transposition has no ONNX translation")
    (out,) = eqn.outvars
    shape = tr.reshape_dims(x.shape, out.aval.shape)
    target = shape if isinstance(shape, str) else tr.ints(shape)
    name = tr.node("Reshape", [tr.tensor(x, _identity(x.rank)), target])
    return [tr.result(out, name, _identity(len(out.aval.shape)))]


def _squeeze(tr, eqn, values):
    (x,) = values
    (out,) = eqn.outvars
    axes = [a % x.rank for a in eqn.params["dimensions"]]
    if not axes:
        return [x]
    layout = x.layout
    name = tr.node("Squeeze", [tr.tensor(x, layout), tr.ints(sorted(layout.index(a) for a in axes))])
    return [tr.result(out, name, _without(layout, set(axes)))]


def _broadcast_in_dim(tr, eqn, values):
    x, *rest = values
    if rest:
        raise TranslationError("a broadcast to dynamic sizes has no ONNX translation")
    (out,) = eqn.outvars
    shape, kept = out.aval.shape, eqn.params["broadcast_dimensions"]
    middle = tuple(x.shape[kept.index(i)] if i in kept else 1 for i in range(len(shape)))
    name = tr.tensor(x, _identity(x.rank))
    if middle != x.shape:
        target = tr.reshape_dims(x.shape, middle)
        name = tr.node("Reshape", [name, target if isinstance(target, str) else tr.ints(target)])
    if not all(_same_dim(m, s) for m, s in zip(middle, shape)):
        grown = [1 if _same_dim(m, s) else s for m, s in zip(middle, shape)]
        name = tr.node("Expand", [name, tr.dims(grown)])
    return [tr.result(out, name, _identity(len(shape)))]


def _transpose(tr, eqn, values):
    """No node: the same tensors, each in the layout that now describes it."""
    (x,) = values
    (out,) = eqn.outvars
    inverse = np.argsort(eqn.params["permutation"])
    names = {tuple(int(inverse[a]) for a in layout): name for layout, name in x.names.items()}
    return [_Value(tuple(out.aval.shape), x.dtype, names=names)]


def _concatenate(tr, eqn, values):
    (out,) = eqn.outvars
    rank = len(out.aval.shape)
    layout = tr.shared_layout(values, rank)
    name = tr.node("Concat", [tr.tensor(v, layout) for v in values], axis=layout.index(eqn.params["dimension"]))
    return [tr.result(out, name, layout)]


def _pad(tr, eqn, values):
    x, fill = values
    (out,) = eqn.outvars
    config = eqn.params["padding_config"]
    if fill.const is None:
        raise TranslationError("a padding value computed by the graph has no ONNX translation")
    if any(interior != 0 or lo < 0 or hi < 0 for lo, hi, interior in config):
        raise TranslationError("only non-negative padding without interior padding has an ONNX translation")
    layout = x.layout
    pads = [config[a][0] for a in layout] + [config[a][1] for a in layout]
    inputs = [tr.tensor(x, layout), tr.ints(pads), tr.scalar(fill.const, x.dtype)]
    return [tr.result(out, tr.node("Pad", inputs, mode="constant"), layout)]


def _slice(tr, eqn, values):
    (x,) = values
    (out,) = eqn.outvars
    p = eqn.params
    strides = p["strides"] or (1,) * x.rank
    layout = x.layout
    ends = []
    for a in layout:
        end = p["limit_indices"][a]
        if not isinstance(end, (int, np.integer)):
            if not _same_dim(end, x.shape[a]):
                raise TranslationError(f"a slice ending at {end} has no ONNX translation")
            end = _LONG
        ends.append(end)
    inputs = [
        tr.tensor(x, layout),
        tr.ints([p["start_indices"][a] for a in layout]),
        tr.ints(ends),
        tr.ints(range(x.rank)),
        tr.ints([strides[a] for a in layout]),
    ]
    return [tr.result(out, tr.node("Slice", inputs), layout)]


def _reduce(op: str):
    def rule(tr, eqn, values):
        (x,) = values
        (out,) = eqn.outvars
        axes = set(eqn.params["axes"])
        if not axes:
            return [x]
        layout = x.layout
        axes_tensor = tr.ints(sorted(layout.index(a) for a in axes))
        name = tr.node(op, [tr.tensor(x, layout), axes_tensor], keepdims=0)
        return [tr.result(out, name, _without(layout, axes))]

    return rule


def _dot_general(tr, eqn, values):
    lhs, rhs = values
    (out,) = eqn.outvars
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    a, b = tr.tensor(lhs, _identity(lhs.rank)), tr.tensor(rhs, _identity(rhs.rank))
    if not lb and not rb and tuple(lc) == (lhs.rank - 1,) and tuple(rc) == (0,) and rhs.rank == 2:
        name = tr.node("MatMul", [a, b])
    else:  # any other contraction, written out as an Einsum
        letters = iter(string.ascii_lowercase)
        left = [next(letters) for _ in range(lhs.rank)]
        right = [None] * rhs.rank
        for i, j in zip(tuple(lc) + tuple(lb), tuple(rc) + tuple(rb)):
            right[j] = left[i]
        right = [r or next(letters) for r in right]
        free_left = [left[i] for i in range(lhs.rank) if i not in lc and i not in lb]
        free_right = [right[j] for j in range(rhs.rank) if j not in rc and j not in rb]
        result = [left[i] for i in lb] + free_left + free_right
        equation = f"{''.join(left)},{''.join(right)}->{''.join(result)}"
        name = tr.node("Einsum", [a, b], equation=equation)
    dtype = np.dtype(out.aval.dtype)
    if dtype != lhs.dtype:
        name = tr.node("Cast", [name], to=helper.np_dtype_to_tensor_dtype(dtype))
    return [tr.result(out, name, _identity(len(out.aval.shape)))]


def _conv_general_dilated(tr, eqn, values):
    lhs, rhs = values
    (out,) = eqn.outvars
    p = eqn.params
    spec = p["dimension_numbers"]
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise TranslationError("only convolutions without input dilation or batch groups have an ONNX translation")
    padding = [tuple(int(v) for v in pad) for pad in p["padding"]]
    if any(lo < 0 or hi < 0 for lo, hi in padding):
        raise TranslationError("a convolution with negative padding has no ONNX translation")
    x = tr.tensor(lhs, spec.lhs_spec)  # (N, C, spatial...)
    w = tr.tensor(rhs, spec.rhs_spec)  # (O, I, spatial...)
    name = tr.node(
        "Conv",
        [x, w],
        kernel_shape=[rhs.shape[d] for d in spec.rhs_spec[2:]],
        strides=list(p["window_strides"]),
        pads=[lo for lo, _ in padding] + [hi for _, hi in padding],
        dilations=list(p["rhs_dilation"]),
        group=p["feature_group_count"],
    )
    return [tr.result(out, name, tuple(spec.out_spec))]


def _pool(kind: str):
    """reduce_window_max -> MaxPool (its padding is never chosen, as XLA's -inf); reduce_window_sum ->
    AveragePool counting the padded zeros, times the window's size. The pooled axes go last."""

    def rule(tr, eqn, values):
        (x,) = values
        (out,) = eqn.outvars
        p = eqn.params
        window, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
        dilation = p["window_dilation"]
        if any(d != 1 for d in p["base_dilation"]):
            raise TranslationError("a window with base dilation has no ONNX translation")
        if any(lo < 0 or hi < 0 for lo, hi in padding):
            raise TranslationError("a window with negative padding has no ONNX translation")
        pooled = {a for a in range(x.rank) if window[a] != 1 or strides[a] != 1 or tuple(padding[a]) != (0, 0)}
        if not pooled:
            return [x]
        layout = tuple(a for a in x.layout if a not in pooled) + tuple(a for a in x.layout if a in pooled)
        spatial = layout[2:]
        if not pooled <= set(spatial) or len(spatial) > 3:
            raise TranslationError(f"a window over {len(pooled)} of {x.rank} axes has no ONNX translation")
        attrs = {
            "kernel_shape": [window[a] for a in spatial],
            "strides": [strides[a] for a in spatial],
            "pads": [padding[a][0] for a in spatial] + [padding[a][1] for a in spatial],
            "dilations": [dilation[a] for a in spatial],
        }
        if kind == "max":
            name = tr.node("MaxPool", [tr.tensor(x, layout)], **attrs)
        else:
            name = tr.node("AveragePool", [tr.tensor(x, layout)], count_include_pad=1, **attrs)
            size = math.prod(attrs["kernel_shape"])
            name = tr.node("Mul", [name, tr.scalar(size, x.dtype)])
        return [tr.result(out, name, layout)]

    return rule


def _scan(tr: _Translator, eqn, values):
    """Unrolled: the body translated once per step (stacked weights indexed while translating)."""
    p = eqn.params
    body, length = p["jaxpr"], p["length"]
    if length < 1:
        raise TranslationError("a scan of no steps has no ONNX translation")
    n_consts, n_carry = p["num_consts"], p["num_carry"]
    consts, carry, xs = values[:n_consts], values[n_consts : n_consts + n_carry], values[n_consts + n_carry :]
    steps = range(length - 1, -1, -1) if p["reverse"] else range(length)
    per_step = {}
    for i in steps:
        outs = tr.run(body.jaxpr, body.consts, [*consts, *carry, *(tr.index(x, i) for x in xs)])
        carry, per_step[i] = outs[:n_carry], outs[n_carry:]
    ys = []
    for k, var in enumerate(eqn.outvars[n_carry:]):
        dropped = isinstance(var, jax_core.DropVar)
        ys.append(None if dropped else tr.stack([per_step[i][k] for i in range(length)], var))
    return [*carry, *ys]


_RULES = {
    "add": _elementwise("Add"),
    "sub": _sub,
    "mul": _elementwise("Mul"),
    "div": _elementwise("Div"),
    "max": _max,
    "min": _elementwise("Min"),
    "pow": _elementwise("Pow"),
    "neg": _elementwise("Neg"),
    "abs": _elementwise("Abs"),
    "exp": _elementwise("Exp"),
    "log": _elementwise("Log"),
    "sqrt": _elementwise("Sqrt"),
    "rsqrt": _elementwise("Sqrt", "Reciprocal"),
    "tanh": _elementwise("Tanh"),
    "logistic": _elementwise("Sigmoid"),
    "square": _elementwise("Mul", twice=True),
    "integer_pow": _integer_pow,
    "lt": _elementwise("Less"),
    "le": _elementwise("LessOrEqual"),
    "gt": _elementwise("Greater"),
    "ge": _elementwise("GreaterOrEqual"),
    "eq": _elementwise("Equal"),
    "ne": _elementwise("Equal", "Not"),
    "and": _logical("And"),
    "or": _logical("Or"),
    "not": _logical("Not"),
    "select_n": _select_n,
    "convert_element_type": _convert_element_type,
    "copy": _copy,
    "reshape": _reshape,
    "squeeze": _squeeze,
    "broadcast_in_dim": _broadcast_in_dim,
    "transpose": _transpose,
    "concatenate": _concatenate,
    "pad": _pad,
    "slice": _slice,
    "reduce_sum": _reduce("ReduceSum"),
    "reduce_max": _reduce("ReduceMax"),
    "reduce_min": _reduce("ReduceMin"),
    "dot_general": _dot_general,
    "conv_general_dilated": _conv_general_dilated,
    "reduce_window_max": _pool("max"),
    "reduce_window_sum": _pool("sum"),
}
# Everything translated: the rules, the calls into sub-programs, and scan (unrolled).
PRIMITIVES = tuple(sorted({*_RULES, *_CALLS, "scan"}))


# --- the graph ----------------------------------------------------------------------------------------


def _value_info(name: str, shape, dtype) -> onnx.ValueInfoProto:
    dims = [int(d) if isinstance(d, (int, np.integer)) else str(d) for d in shape]
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims)


def translate(
    forward,
    variables,
    spec: jax.ShapeDtypeStruct,
    *,
    name: str = "model",
    input_name: str = "images",
    output_name: str = "logits",
) -> onnx.ModelProto:
    """`forward(variables, images) -> array` as an ONNX model with one input and one output; a symbolic
    size in `spec` (the batch) stays symbolic. Raises TranslationError for what it cannot express."""
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(variables)]
    closed = jax.make_jaxpr(forward)(variables, spec)
    tr = _Translator()
    dtype = _checked(spec.dtype)
    images = _Value(tuple(spec.shape), dtype, names={_identity(len(spec.shape)): input_name})
    for axis, d in enumerate(spec.shape):
        if not isinstance(d, (int, np.integer)):
            tr.symbols.setdefault(str(d), (input_name, axis))
    outs = tr.run(closed.jaxpr, closed.consts, [*(_constant(leaf) for leaf in leaves), images])
    if len(outs) != 1:
        raise TranslationError(f"the function returns {len(outs)} arrays; ONNX export takes one")
    (out,) = outs
    tr.nodes.append(helper.make_node("Identity", [tr.tensor(out, _identity(out.rank))], [output_name]))
    graph = helper.make_graph(
        tr.nodes,
        name,
        [_value_info(input_name, spec.shape, dtype)],
        [_value_info(output_name, out.shape, out.dtype)],
        initializer=tr.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="inception_jax",
    )
    onnx.checker.check_model(model)
    return model
