"""Building blocks shared by every Inception family.

Conventions every model file follows (so one generic converter can load timm/torchvision weights):

* A conv-BN-ReLU unit is a `ConvBN` module with children named `conv` and `bn`, exactly like the
  PyTorch `BasicConv2d` / `ConvNormAct` path `Mixed_5b.branch1x1.conv.weight`.
* Padding is written as the PyTorch reference writes it (an int or (h, w) pair of symmetric pads).
  `padding_mode="tf"` turns every padded op into TF 'SAME' (asymmetric for even inputs with stride 2),
  which is what TF-slim and Keras checkpoints expect (REFERENCES.md §3.2).
* Average pools take `count_include_pad` explicitly: timm/torchvision Inception-v3 include the padding,
  timm v4 / IR-v2 and every TF model exclude it (REFERENCES.md §3.2).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Literal, Sequence

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

Dtype = Any
PaddingMode = Literal["torch", "tf"]
IntPair = int | tuple[int, int]

# slim's variance_scaling_initializer (He-style, truncated) for convs; timm's trunc-normal std 0.1
# gives exploding activations at init (REFERENCES.md §7), so we do not copy it.
conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
dense_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def pair(v: IntPair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def resolve_padding(padding: IntPair | str, mode: PaddingMode):
    """Maps a PyTorch-style symmetric padding to what `lax` takes, under the given convention."""
    if isinstance(padding, str):
        return padding.upper()
    ph, pw = pair(padding)
    if mode == "tf":
        return "SAME" if (ph or pw) else "VALID"
    return ((ph, ph), (pw, pw))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None):
    """`lax.conv_general_dilated` for Flax's NHWC inputs and HWIO kernels, except that a 1x1 convolution
    with stride 1 and no padding is computed as the matrix multiply it is.

    The result is the same function (and the same parameters); what changes is speed. XLA's CPU
    backend runs the backward pass of a 1x1 convolution 3-4x slower than a `dot_general` of the same
    size, and 40-65% of an Inception's convolutions are 1x1 (v3: 40 of 94; IR-v2: 140 of 244).
    BENCHMARKS.md: on a CPU the train step runs 1.07x faster for Inception-v3, 1.47x for IR-v2.
    """
    trivial = lambda v: v is None or all(d == 1 for d in v)
    unpadded = isinstance(padding, str) or all(lo == 0 and hi == 0 for lo, hi in padding)
    if (rhs.shape[:-2] == (1,) * (rhs.ndim - 2) and all(s == 1 for s in window_strides) and unpadded
            and trivial(lhs_dilation) and trivial(rhs_dilation) and feature_group_count == 1):
        # As a 2-D product of (N*H*W, C_in) rows: XLA's CPU backend then computes the kernel's gradient
        # as one transposed-operand matrix product, where a 4-D `dot_general` had it copy the output's
        # gradient into a (C, N*H*W) layout first (and recompute the producer's fusion to do so).
        kernel = rhs.reshape(rhs.shape[-2:])
        rows = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), kernel, (((1,), (0,)), ((), ())),
                                   precision=precision)
        return rows.reshape(*lhs.shape[:-1], kernel.shape[-1])
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count, precision=precision)


def channel_sum(x):
    """Sum over every axis but the last (the channels), accumulated in at least float32.

    On a CPU this is a matrix-vector product with a vector of ones: XLA's CPU backend is slow at
    reductions that keep the minor (channel) axis, about 8x slower than Eigen's matrix-vector product
    (8x73x73x80: 2.5 vs 0.33 ms; BENCHMARKS.md). Other platforms get XLA's reduce, which they fuse well.
    The branch is chosen when the program is traced, by JAX's default backend: both compute the same sum
    (to float rounding) on any platform, so a program traced for one and run on another is only slower.
    (`lax.platform_dependent`, which decides at lowering, traces both branches and a conditional for
    every call: 376 of them cost 0.4-0.5 s of each Inception-v3 train step's trace.)
    """
    lead = tuple(range(x.ndim - 1))
    acc = _at_least_float32(x.dtype)

    def as_dot(v):
        # Rows of (N*H, W*C): the product sums N*H values per output, then a small reduce adds each
        # channel's W partial sums. One product over all N*H*W rows adds in sequence and rounds ~40x
        # worse, enough to move Inception-v3's train-mode logits 5x further from timm's at batch 2.
        rows = v.reshape(-1, math.prod(v.shape[-2:])) if v.ndim > 2 else v
        ones = jnp.ones(rows.shape[:1], v.dtype)
        partial = jax.lax.dot_general(ones, rows, (((0,), (0,)), ((), ())), preferred_element_type=acc)
        return jnp.sum(partial.reshape(-1, v.shape[-1]), 0)

    return as_dot(x) if jax.default_backend() == "cpu" else jnp.sum(x, lead, dtype=acc)


def _at_least_float32(dtype):
    """BatchNorm statistics are kept in float32 for half-precision inputs (as Flax does), float64 stays."""
    return jnp.promote_types(dtype, jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon: float):
    """Training-mode batch normalisation over every axis but the last: `(y, mean, var)` with
    `y = (x - mean) * rsqrt(var + epsilon) * scale + bias`, in at least float32, `var` the biased variance.

    The gradient is written out (BN paper, Ioffe & Szegedy 2015, section 3) so that its two per-channel
    sums go through `channel_sum`: autodiff would transpose each per-channel broadcast into a reduction.
    The variance is two-pass, E[(x - mean)^2], not Flax's E[x^2] - mean^2, so it cannot cancel.
    """
    return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
    count = math.prod(x.shape[:-1])
    xf = x.astype(_at_least_float32(x.dtype))
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
    # the statistics are outputs too (for the running averages); their cotangents are usually zero
    dx = dx + (dmean + 2.0 * dvar * centred) / count
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class ShapeCheckedParams:
    """Mixin for Flax modules: `param` that reads an existing parameter without tracing its initializer.

    On every `apply`, Flax's `Module.param` runs the initializer under `jax.eval_shape` only to check
    the stored parameter's shape: 284 initializer traces per Inception-v3 forward pass, a fifth of its
    train step's trace time (BENCHMARKS.md). Here the stored shape is compared with the requested one
    directly, with Flax's own error (`flax.errors.ScopeParamShapeError`) on a mismatch. Creating
    parameters (`init`) goes through Flax unchanged. The requested shape is the first argument after
    the key, as for every Flax initializer; a call without one goes through Flax.
    """

    def param(self, name: str, init_fn: Callable, *init_args, unbox: bool = True, **init_kwargs):
        shape = init_args[0] if init_args else init_kwargs.get("shape")
        if shape is None or not self.has_variable("params", name):
            return super().param(name, init_fn, *init_args, unbox=unbox, **init_kwargs)
        value = self.get_variable("params", name)
        stored = np.shape(meta.unbox(value))
        if tuple(stored) != tuple(shape):
            raise flax.errors.ScopeParamShapeError(name, self.scope.path_text, stored, tuple(shape))
        return meta.unbox(value) if unbox else value


class Conv(ShapeCheckedParams, nn.Conv):
    """`flax.linen.Conv` (same parameters, same function) that computes 1x1 convolutions as matrix
    products (`conv_general_dilated`) and reads its parameters without re-tracing their initializers."""

    conv_general_dilated: Callable = conv_general_dilated


class Dense(ShapeCheckedParams, nn.Dense):
    """`flax.linen.Dense` reading its parameters without re-tracing their initializers."""


class BatchNorm(ShapeCheckedParams, nn.BatchNorm):
    """`flax.linen.BatchNorm` over the last axis, with the same parameters (`scale`, `bias`), running
    statistics (`mean`, `var`, Flax's momentum convention) and function, whose training mode runs
    through `batch_norm_train`: on a CPU its forward and backward passes take a half to a third of the
    time of Flax's (BENCHMARKS.md). Inference normalises with the running statistics exactly as Flax does.
    A subclass, so code that looks for `nn.BatchNorm` layers (`inception_jax.finetune`) finds these.
    """

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        if mask is not None or self.axis_name is not None or self.axis not in (-1, x.ndim - 1):
            raise NotImplementedError("layers.BatchNorm normalises over the last axis without masks or named "
                                      "axes (under jit, sharded batches already get global statistics); "
                                      "use flax.linen.BatchNorm for those")
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (features,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (features,))
        stat_dtype = _at_least_float32(x.dtype)
        scale = (self.param("scale", self.scale_init, (features,), self.param_dtype) if self.use_scale
                 else jnp.ones((features,), stat_dtype))
        bias = (self.param("bias", self.bias_init, (features,), self.param_dtype) if self.use_bias
                else jnp.zeros((features,), stat_dtype))
        learned = [p for p, used in ((scale, self.use_scale), (bias, self.use_bias)) if used]
        dtype = self.dtype or jnp.result_type(x, *learned)  # Flax's rule for the output's dtype
        if use_running_average:
            # Flax's order of operations, so inference matches it bit for bit
            mul = jax.lax.rsqrt(ra_var.value + self.epsilon) * scale
            return jnp.asarray((x - ra_mean.value) * mul + bias, dtype)
        y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y.astype(dtype)


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU, the unit every Inception is built from.

    `use_bn=False` gives a biased conv (GoogLeNet 2014, IR-v2's residual "up" conv); `act=False` drops
    the ReLU. BatchNorm momentum uses Flax's convention (decay of the old value): PyTorch's 0.1 is 0.9.
    """

    features: int
    kernel_size: IntPair
    strides: IntPair = 1
    padding: IntPair | str = 0
    padding_mode: PaddingMode = "torch"
    feature_group_count: int = 1
    use_bn: bool = True
    act: bool = True
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3
    bn_use_scale: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Conv(
            self.features,
            pair(self.kernel_size),
            strides=pair(self.strides),
            padding=resolve_padding(self.padding, self.padding_mode),
            feature_group_count=self.feature_group_count,
            use_bias=not self.use_bn,
            kernel_init=conv_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
        if self.use_bn:
            # `use_running_average` is a call argument, not a field, so that fine-tuning can hold the
            # statistics fixed in train mode by intercepting this call (inception_jax.finetune).
            x = BatchNorm(
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                use_scale=self.bn_use_scale,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="bn",
            )(x, use_running_average=not train)
        return nn.relu(x) if self.act else x


def ceil_mode_pads(size: int, window: int, stride: int, pad: int = 0) -> tuple[int, int]:
    """Pads that make a pool behave like PyTorch's `ceil_mode=True` (extra pad at the end only).

    PyTorch drops a last window that would start inside the right padding; mirror that rule.
    """
    out = math.ceil((size + 2 * pad - window) / stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    extra = max(0, (out - 1) * stride + window - size - 2 * pad)
    return (pad, pad + extra)


def max_pool(
    x,
    window: IntPair,
    strides: IntPair,
    padding: IntPair | str = 0,
    *,
    ceil_mode: bool = False,
    padding_mode: PaddingMode = "torch",
):
    """Max pool with PyTorch (symmetric pads, optional ceil_mode) or TF ('SAME') semantics.

    Padding is -inf, as in both frameworks, so padded cells never win.
    """
    window, strides = pair(window), pair(strides)
    if isinstance(padding, str):
        pads = padding.upper()
    elif padding_mode == "tf":
        pads = "SAME" if (ceil_mode or any(pair(padding))) else "VALID"
    else:
        ph, pw = pair(padding)
        if ceil_mode:
            pads = (
                ceil_mode_pads(x.shape[1], window[0], strides[0], ph),
                ceil_mode_pads(x.shape[2], window[1], strides[1], pw),
            )
        else:
            pads = ((ph, ph), (pw, pw))
    if isinstance(pads, str):
        pads = jax.lax.padtype_to_pads(x.shape[1:3], window, strides, pads)
    return _max_pool(x, window, strides, tuple(tuple(p) for p in pads))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
    """XLA's max pool (`reduce_window`) on NHWC input padded with -inf, differentiated by picking taps.

    XLA differentiates a max pool into `select-and-scatter`, which its CPU backend runs 3-4x slower than
    PyTorch runs its max pools (GoogLeNet's 13, forward + backward, batch 8: 778 vs 210 ms; 97 ms this
    way; BENCHMARKS.md update 5). Here the derivative is written as what it is: the window's kh x kw taps
    are strided slices of the padded input; the first tap, in row-major order, that holds the maximum
    (PyTorch's and XLA's tie rule; a NaN wins, as in PyTorch) passes its tangent through
    (`lax.select_n`, one int32 index per output kept for the backward pass). Reverse mode transposes that
    into padded copies of the cotangent, added: elementwise work XLA fuses. The values are XLA's; the
    gradients are XLA's up to the order in which overlapping windows add.
    """
    dims, strides4 = (1, *window, 1), (1, *strides, 1)
    return jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max, dims, strides4, ((0, 0), *pads, (0, 0)))


@_max_pool.defjvp
def _max_pool_jvp(window, strides, pads, primals, tangents):
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


def avg_pool(
    x,
    window: IntPair,
    strides: IntPair,
    padding: IntPair | str = 0,
    *,
    count_include_pad: bool,
    padding_mode: PaddingMode = "torch",
):
    """Average pool; `count_include_pad` decides whether padded zeros count in the divisor."""
    return nn.avg_pool(
        x,
        pair(window),
        pair(strides),
        padding=resolve_padding(padding, padding_mode),
        count_include_pad=count_include_pad,
    )


def global_avg_pool(x):
    """Mean over H and W, computed in (at least) float32 so bf16 models pool without precision loss."""
    return jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2)).astype(x.dtype)


def local_response_norm(x, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
    """Cross-channel LRN as in AlexNet/GoogLeNet 2014 (Caffe/PyTorch form: alpha divided by size)."""
    sq = jnp.square(x.astype(jnp.float32))
    half = size // 2
    sq = jnp.pad(sq, ((0, 0), (0, 0), (0, 0), (half, size - 1 - half)))
    window_sum = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1), "VALID")
    div = jnp.power(k + (alpha / size) * window_sum, beta)
    return (x.astype(jnp.float32) / div).astype(x.dtype)


def scaled_depth(channels: int, multiplier: float, min_depth: int = 16) -> int:
    """TF-slim's `depth_multiplier`: scale a channel count, never below `min_depth`."""
    if multiplier == 1.0:
        return channels
    return max(int(channels * multiplier), min_depth)


def check_input(x, *, model: str, min_size: int, in_channels: int = 3):
    """Fails early, with the fix spelled out, instead of deep inside an XLA shape error."""
    if not hasattr(x, "ndim") or x.ndim != 4:
        shape = getattr(x, "shape", None)
        raise ValueError(
            f"{model}: expected a batch of NHWC images with shape (batch, height, width, {in_channels}), "
            f"got shape {shape}; add a batch axis with x[None] or move channels last."
        )
    if x.shape[-1] != in_channels:
        raise ValueError(
            f"{model}: expected {in_channels} channels in the last axis (NHWC), got shape {tuple(x.shape)}; "
            f"transpose NCHW input with x.transpose(0, 2, 3, 1) or set in_channels={x.shape[-1]}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{model}: expected floating-point images, got dtype {x.dtype}; convert and normalise first, "
            "e.g. x.astype(jnp.float32) / 127.5 - 1."
        )
    h, w = x.shape[1], x.shape[2]
    if h < min_size or w < min_size:
        raise ValueError(
            f"{model}: input {h}x{w} is below the minimum size {min_size}x{min_size}; resize the images "
            f"to at least {min_size} pixels per side."
        )


def classifier(x, num_classes: int, *, dtype, param_dtype, name: str):
    """The final linear layer (PyTorch `nn.Linear` layout after transposition)."""
    return Dense(num_classes, kernel_init=dense_init, dtype=dtype, param_dtype=param_dtype, name=name)(x)


def concat(branches: Sequence[jax.Array]):
    return jnp.concatenate(branches, axis=-1)


Act = Callable[[jax.Array], jax.Array]


def adaptive_avg_pool(x, output_size: int):
    """PyTorch's `adaptive_avg_pool2d(x, output_size)` on NHWC input, for any input size.

    Output cell i along an axis of length n averages [floor(i*n/o), ceil((i+1)*n/o)): windows vary in
    size and may overlap (14 -> 4 uses [0,4) [3,7) [7,11) [10,14)). Pooling rows, then columns, equals
    the 2-D window mean because every window is a rectangle.
    """

    def pool_axis(v, axis):
        n = v.shape[axis]
        cells = []
        for i in range(output_size):
            start, end = (i * n) // output_size, -(-((i + 1) * n) // output_size)
            cells.append(jnp.mean(jax.lax.slice_in_dim(v, start, end, axis=axis), axis=axis, keepdims=True))
        return jnp.concatenate(cells, axis=axis)

    return pool_axis(pool_axis(x.astype(jnp.promote_types(x.dtype, jnp.float32)), 1), 2).astype(x.dtype)


def check_common_options(module: nn.Module, model: str) -> None:
    """The options every variant shares, checked before any layer is built."""
    if module.padding_mode not in ("torch", "tf"):
        raise ValueError(f"{model}: padding_mode must be 'torch' or 'tf', got {module.padding_mode!r}")
    if module.width_multiplier <= 0:
        raise ValueError(f"{model}: width_multiplier must be positive, got {module.width_multiplier}")
    if module.num_classes < 0:
        raise ValueError(f"{model}: num_classes must be >= 0 (0 = no classifier), got {module.num_classes}")


def check_depths(depths, model: str, stages: str) -> None:
    """`depths` (blocks per stage, for v4 and Inception-ResNet): three counts of at least 1 each."""
    whole = lambda d: isinstance(d, numbers.Integral) and not isinstance(d, bool)
    if len(depths) != 3 or not all(whole(d) and d >= 1 for d in depths):
        raise ValueError(f"{model}: depths takes 3 whole numbers >= 1 (the {stages}), got {depths!r}")


@functools.lru_cache(maxsize=None)
def remat_if(block_cls: type, enabled: bool) -> type:
    """`block_cls`, or with `enabled` its gradient-checkpointed form (`nn.remat`, i.e. `jax.checkpoint`):
    the block keeps only its input for the backward pass and recomputes its inner activations there, so
    training holds one block's intermediates at a time instead of every block's, for about one more
    forward pass of compute. Parameter names and values are unchanged, so weight files load either way.
    Blocks are called as `block(x, train)`; `train` (argument 2, counting `self`) is static."""
    return nn.remat(block_cls, static_argnums=(2,)) if enabled else block_cls


def bound_conv(module: nn.Module, **fixed):
    """`conv(features, kernel, ...)`: a ConvBN with the network's padding, BN and dtype options bound and
    its width scaled by `width_multiplier` (slim's depth_multiplier). `fixed` adds family options."""
    options = dict(padding_mode=module.padding_mode, bn_momentum=module.bn_momentum,
                   bn_epsilon=module.bn_epsilon, bn_use_scale=getattr(module, "bn_use_scale", True),
                   dtype=module.dtype, param_dtype=module.param_dtype)
    base = functools.partial(ConvBN, **{**options, **fixed})

    def conv(features: int, kernel_size, **kwargs):
        return base(scaled_depth(features, module.width_multiplier), kernel_size, **kwargs)

    return conv


def classifier_head(module: nn.Module, x, train: bool, out: dict, name: str):
    """Global average pool -> `out["pre_logits"]` -> dropout -> linear; the features when num_classes=0."""
    x = global_avg_pool(x)
    out["pre_logits"] = x
    x = nn.Dropout(module.dropout_rate, deterministic=not train)(x)
    if module.num_classes == 0:
        return x
    return classifier(x, module.num_classes, dtype=module.dtype, param_dtype=module.param_dtype, name=name)
