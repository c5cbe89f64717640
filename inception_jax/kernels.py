"""Backend-specific formulations behind one switch: `kernels = "auto" | "xla" | "cpu"`.

"xla" runs the libraries' own operations; "cpu" runs rewrites of the same functions that XLA's CPU
backend compiles into faster code (1x1 convolutions as products, BatchNorm's written-out gradient, the
max pool's derivative by its winning tap, global norms over one concatenation). "auto" follows the
platform the program is built for: the trainer resolves it from its mesh (`for_platform`, `use`); traced
elsewhere, both forms are staged for the lowering platform to choose. Usage: docs/performance.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

KERNELS = ("auto", "xla", "cpu")
log = logging.getLogger(__name__)
CPU_FORM_SCOPE = "cpu_form"  # the named scope of every CPU form, visible in lowered programs

_choice = contextvars.ContextVar("inception_jax_kernels", default="auto")


def check(kernels: str, field: str = "kernels") -> str:
    if kernels not in KERNELS:
        raise ValueError(
            f"{field}={kernels!r} is not one of {KERNELS}: 'auto' picks the CPU forms for CPU "
            "programs and XLA's operations elsewhere, 'xla' and 'cpu' force one"
        )
    return kernels


def for_platform(kernels: str, platform: str) -> str:
    """What `kernels` means for a program compiled for `platform` ("cpu", "cuda", "rocm", "tpu")."""
    if check(kernels) != "auto":
        return kernels
    return "cpu" if platform == "cpu" else "xla"


@contextlib.contextmanager
def use(kernels: str):
    """Layers and norms traced inside take `kernels`."""
    token = _choice.set(check(kernels))
    try:
        yield
    finally:
        _choice.reset(token)


def current() -> str:
    return _choice.get()


def from_field(method):
    """Decorates a model's `__call__`: a `kernels` field other than "auto" applies to its layers."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        choice = check(self.kernels, f"{type(self).__name__}.kernels")
        with use(choice) if choice != "auto" else contextlib.nullcontext():
            return method(self, *args, **kwargs)

    return wrapper


def select(cpu_form, xla_form, *args, kernels: str | None = None):
    """`cpu_form(*args)` or `xla_form(*args)` by `kernels` (default: `current()`); "auto" stages both
    and lets the lowering platform choose."""
    choice = kernels or current()
    if choice == "cpu":
        with jax.named_scope(CPU_FORM_SCOPE):
            return cpu_form(*args)
    if choice == "xla":
        return xla_form(*args)

    def scoped_cpu_form(*a):
        with jax.named_scope(CPU_FORM_SCOPE):
            return cpu_form(*a)

    return jax.lax.platform_dependent(*args, cpu=scoped_cpu_form, default=xla_form)


# --- XLA's CPU convolutions -----------------------------------------------------------------------

CPU_CONVOLUTIONS = ("eigen", "ynnpack")
# The option lists the kinds of subgraph YNNPACK may take; empty: none. (Letting it keep elementwise
# ops and reductions is no faster, and its fusions of those then pull neighbouring convolutions in.)
_NO_YNNPACK = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _cpu_option_supported() -> bool:
    """Whether this jaxlib knows the option (it is experimental: a later XLA may rename or drop it)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=_NO_YNNPACK).lower(jax.ShapeDtypeStruct((), np.float32)).compile()
        return True
    except Exception as e:  # noqa: BLE001 - XLA reports an unknown option as a generic runtime error
        log.warning(
            "XLA does not take %s (%s); CPU convolutions stay with XLA's default library",
            next(iter(_NO_YNNPACK)),
            str(e).splitlines()[0],
        )
        return False


def compiler_options(devices, convolutions: str = "eigen") -> dict[str, str] | None:
    """`jax.jit(compiler_options=...)` for a program that runs on `devices` (a Mesh, a sequence of
    devices, or one device): on a CPU, convolutions by XLA's own Eigen emitter instead of the YNNPACK
    library XLA hands them to by default, whose convolutions (their backward passes above all) are
    several times slower here (BENCHMARKS.md); "ynnpack" keeps XLA's default. None (nothing to change)
    on other platforms. Pass it to your own `jax.jit` to get the trainer's CPU speed."""
    if convolutions not in CPU_CONVOLUTIONS:
        raise ValueError(f"convolutions={convolutions!r}; expected one of {CPU_CONVOLUTIONS}")
    first = next(iter(np.ravel(getattr(devices, "devices", devices))))
    if first.platform != "cpu" or convolutions == "ynnpack" or not _cpu_option_supported():
        return None
    return dict(_NO_YNNPACK)


# --- convolutions ---------------------------------------------------------------------------------


def _is_1x1_product(rhs, window_strides, padding, lhs_dilation, rhs_dilation, feature_group_count):
    trivial = lambda v: v is None or all(d == 1 for d in v)
    unpadded = isinstance(padding, str) or all(lo == 0 and hi == 0 for lo, hi in padding)
    return (
        rhs.shape[:-2] == (1,) * (rhs.ndim - 2)
        and all(s == 1 for s in window_strides)
        and unpadded
        and trivial(lhs_dilation)
        and trivial(rhs_dilation)
        and feature_group_count == 1
    )


def _conv_1x1_as_product(lhs, rhs, precision):
    # (N*H*W, C_in) rows: XLA's CPU backend then computes the kernel's gradient as one transposed-operand
    # product, where a 4-D `dot_general` had it copy the output's gradient into a (C, N*H*W) layout first.
    kernel = rhs.reshape(rhs.shape[-2:])
    rows = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), kernel, (((1,), (0,)), ((), ())), precision=precision)
    return rows.reshape(*lhs.shape[:-1], kernel.shape[-1])


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
):
    """`lax.conv_general_dilated` on Flax's NHWC inputs and HWIO kernels; in the CPU form a 1x1
    convolution with stride 1 and no padding is the matrix product it is."""
    lax_conv = functools.partial(
        jax.lax.conv_general_dilated,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
    )
    if not _is_1x1_product(rhs, window_strides, padding, lhs_dilation, rhs_dilation, feature_group_count):
        return lax_conv(lhs, rhs)
    return select(functools.partial(_conv_1x1_as_product, precision=precision), lax_conv, lhs, rhs)


# --- BatchNorm in training mode -------------------------------------------------------------------


def at_least_float32(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def channel_sum(x):
    """Sum over every axis but the last, in at least float32, as a matrix-vector product with ones:
    XLA's CPU backend is slow at reductions that keep the minor (channel) axis."""
    acc = at_least_float32(x.dtype)
    # Rows of (N*H, W*C), then a small reduce over W: one product over all N*H*W rows would add in
    # sequence and round about 40x worse.
    rows = x.reshape(-1, math.prod(x.shape[-2:])) if x.ndim > 2 else x
    ones = jnp.ones(rows.shape[:1], x.dtype)
    partial = jax.lax.dot_general(ones, rows, (((0,), (0,)), ((), ())), preferred_element_type=acc)
    return jnp.sum(partial.reshape(-1, x.shape[-1]), 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon: float):
    """`(y, mean, var)` of training-mode BatchNorm over every axis but the last, in at least float32:
    `y = (x - mean) * rsqrt(var + epsilon) * scale + bias`, `var` the biased two-pass variance.

    The gradient is written out (Ioffe & Szegedy 2015, section 3) so that its per-channel sums go
    through `channel_sum`; autodiff would transpose each broadcast into a reduction.
    """
    return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
    count = math.prod(x.shape[:-1])
    xf = x.astype(at_least_float32(x.dtype))
    mean = channel_sum(xf) / count
    var = channel_sum(jnp.square(xf - mean)) / count
    inv = jax.lax.rsqrt(var + epsilon)
    y = (xf - mean) * (inv * scale) + bias
    return (y, mean, var), (x, mean, inv, scale, bias)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
    del epsilon
    x, mean, inv, scale, bias = residuals
    dy, dmean, dvar = (c.astype(mean.dtype) for c in cotangents)
    count = math.prod(x.shape[:-1])
    centred = x.astype(mean.dtype) - mean
    normed = centred * inv
    dbias = channel_sum(dy)
    dscale = channel_sum(dy * normed)
    dx = (scale * inv) * (dy - (dbias + normed * dscale) / count)
    dx = dx + (dmean + 2.0 * dvar * centred) / count  # the statistics feed the running averages
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def batch_norm_cpu_form_applies(module: nn.BatchNorm, x, mask) -> bool:
    """Whether `batch_norm_train` computes what Flax's `module` would: statistics over every axis but
    the last, two-pass variance, float32 reductions, no mask or named axes."""
    return (
        mask is None
        and module.axis_name is None
        and module.axis_index_groups is None
        and module.axis in (-1, x.ndim - 1)
        and not module.use_fast_variance
        and module.force_float32_reductions
    )


def flax_batch_norm_train(module: nn.BatchNorm, x, scale, bias, mean, var):
    """Flax's own training-mode BatchNorm with `module`'s options, as a pure function:
    `(y, new running mean, new running var)`. `scale`/`bias` are None when the module has none."""
    flax_bn = nn.BatchNorm(**{f: getattr(module, f) for f in _FLAX_BN_FIELDS}, parent=None)
    params = {k: v for k, v in (("scale", scale), ("bias", bias)) if v is not None}
    y, updated = flax_bn.apply(
        {"params": params, "batch_stats": {"mean": mean, "var": var}},
        x,
        use_running_average=False,
        mutable=["batch_stats"],
    )
    return y, updated["batch_stats"]["mean"], updated["batch_stats"]["var"]


_FLAX_BN_FIELDS = (
    "axis",
    "momentum",
    "epsilon",
    "dtype",
    "param_dtype",
    "use_bias",
    "use_scale",
    "axis_name",
    "axis_index_groups",
    "use_fast_variance",
    "force_float32_reductions",
)


def cpu_batch_norm_train(module: nn.BatchNorm, x, scale, bias, mean, var):
    """`flax_batch_norm_train`'s result through `batch_norm_train` (same dtypes, same update rule)."""
    stat = at_least_float32(x.dtype)
    learned = [p for p in (scale, bias) if p is not None]
    out_dtype = module.dtype or jnp.result_type(x, *learned)  # Flax's rule for the output's dtype
    y, batch_mean, batch_var = batch_norm_train(
        x,
        jnp.ones(x.shape[-1:], stat) if scale is None else scale,
        jnp.zeros(x.shape[-1:], stat) if bias is None else bias,
        module.epsilon,
    )
    momentum = module.momentum
    new_mean = momentum * mean + (1 - momentum) * batch_mean
    new_var = momentum * var + (1 - momentum) * batch_var
    return y.astype(out_dtype), new_mean, new_var


# --- max pool -------------------------------------------------------------------------------------


def max_pool(x, window: tuple[int, int], strides: tuple[int, int], pads: tuple[tuple[int, int], ...]):
    """Max pool over H and W of NHWC input padded with -inf (`pads`: ((top, bottom), (left, right)));
    XLA's `reduce_window`, with the derivative of the chosen form."""
    return select(
        functools.partial(_max_pool_cpu, window=window, strides=strides, pads=pads),
        functools.partial(_max_pool_xla, window=window, strides=strides, pads=pads),
        x,
    )


def _max_pool_xla(x, *, window, strides, pads):
    dims, strides4 = (1, *window, 1), (1, *strides, 1)
    return jax.lax.reduce_window(x, np.array(-np.inf, x.dtype), jax.lax.max, dims, strides4, ((0, 0), *pads, (0, 0)))


def _max_pool_cpu(x, *, window, strides, pads):
    return _max_pool_picking_taps(x, window, strides, pads)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _max_pool_picking_taps(x, window, strides, pads):
    """XLA's max pool, differentiated by picking taps: the window's taps are strided slices of the
    padded input; the first tap in row-major order holding the maximum (PyTorch's and XLA's tie rule;
    a NaN wins, as in PyTorch) passes its tangent (`lax.select_n`, one int32 index per output). Reverse
    mode transposes that into padded copies of the cotangent, added: elementwise work XLA fuses, where
    its CPU backend runs XLA's own `select_and_scatter` slowly."""
    return _max_pool_xla(x, window=window, strides=strides, pads=pads)


@_max_pool_picking_taps.defjvp
def _max_pool_picking_taps_jvp(window, strides, pads, primals, tangents):
    (x,), (x_dot,) = primals, tangents
    padding = ((0, 0), *pads, (0, 0))
    xp = jnp.pad(x, padding, constant_values=-jnp.inf)
    out_h, out_w = ((n - k) // s + 1 for n, k, s in zip(xp.shape[1:3], window, strides))

    def taps(v):  # the window's taps, row-major: each a (N, out_h, out_w, C) strided slice of v
        for i in range(window[0]):
            for j in range(window[1]):
                limit = (v.shape[0], i + (out_h - 1) * strides[0] + 1, j + (out_w - 1) * strides[1] + 1, v.shape[3])
                yield jax.lax.slice(v, (0, i, j, 0), limit, (1, *strides, 1))

    first, *rest = taps(xp)
    y, which = first, jnp.zeros(first.shape, jnp.int32)
    for t, v in enumerate(rest, 1):
        wins = (v > y) | jnp.isnan(v)
        y, which = jnp.where(wins, v, y), jnp.where(wins, t, which)
    return y, jax.lax.select_n(which, *taps(jnp.pad(x_dot, padding)))


# --- global norms ---------------------------------------------------------------------------------


def global_norm(tree, kernels: str | None = None) -> jax.Array:
    """The Euclidean norm of all leaves together, in at least float32: optax's `tree.norm` (a sum per
    leaf), or in the CPU form one sum over the leaves' concatenation (a few compiled kernels in place
    of three per leaf)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    acc = functools.reduce(jnp.promote_types, [x.dtype for x in leaves], jnp.float32)

    def concatenated(leaves):
        return jnp.sqrt(jnp.sum(jnp.square(jnp.concatenate([x.ravel().astype(acc) for x in leaves]))))

    def per_leaf(leaves):
        return optax.tree.norm([x.astype(acc) for x in leaves])

    return select(concatenated, per_leaf, leaves, kernels=kernels)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm(max_norm)`; with the CPU form's norm where `kernels` says so."""
    optax_clip = optax.clip_by_global_norm(max_norm)

    def update_fn(updates, state, params=None):
        if current() == "xla":
            return optax_clip.update(updates, state, params)
        norm = global_norm(updates)
        keep = norm < max_norm
        updates = jax.tree.map(lambda t: jax.lax.select(keep, t, (t / norm.astype(t.dtype)) * max_norm), updates)
        return updates, state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)
