"""Building blocks shared by every Inception family, written so one converter loads every reference.

A conv-BN-ReLU unit is `ConvBN` with children `conv` and `bn`, as PyTorch's `BasicConv2d` / `ConvNormAct`
(`Mixed_5b.branch1x1.conv.weight`). Padding is written as the PyTorch reference writes it;
`padding_mode="tf"` makes every padded op TF 'SAME', as TF-slim and Keras checkpoints expect. Average
pools take `count_include_pad` explicitly, since the references disagree (REFERENCES.md §3.2).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax import kernels

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


# A model's `__call__` decorated with this runs its layers with the model's `kernels` field.
kernel_scope = kernels.from_field


class Conv(nn.Conv):
    """`flax.linen.Conv` whose 1x1 convolutions take the CPU form where `kernels` says so
    (`inception_jax.kernels.conv_general_dilated`): the same parameters and function."""

    conv_general_dilated: Callable = kernels.conv_general_dilated


class BatchNorm(nn.BatchNorm):
    """`flax.linen.BatchNorm` (same variables, same function) over a two-pass variance, whose training
    mode takes the CPU form (`kernels.batch_norm_train`) where `kernels` says so. Options the CPU form
    does not implement (masks, named axes, `use_fast_variance`) run Flax's form under "auto" and raise
    under "cpu". A subclass, so code that looks for `nn.BatchNorm` layers (`finetune`) finds these."""

    use_fast_variance: bool = False

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        choice = kernels.current()
        cpu_form = kernels.batch_norm_cpu_form_applies(self, x, mask)
        if choice == "cpu" and not cpu_form and not use_running_average:
            raise ValueError(
                f"BatchNorm {self.scope.path_text!r}: kernels='cpu' normalises over the last axis with a "
                "two-pass variance, without masks, axis_name or axis_index_groups; use kernels='auto' or 'xla'"
            )
        if use_running_average or choice == "xla" or not cpu_form:
            return super().__call__(x, use_running_average=use_running_average, mask=mask)
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (features,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (features,))
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype) if self.use_scale else None
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype) if self.use_bias else None
        y, mean, var = kernels.select(
            functools.partial(kernels.cpu_batch_norm_train, self),
            functools.partial(kernels.flax_batch_norm_train, self),
            x,
            scale,
            bias,
            ra_mean.value,
            ra_var.value,
        )
        if not self.is_initializing():
            ra_mean.value, ra_var.value = mean, var
        return y


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
            # statistics fixed in train mode by intercepting this call (inception_jax.trainer.finetune).
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
    return kernels.max_pool(x, window, strides, tuple(tuple(p) for p in pads))


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
    return nn.Dense(num_classes, kernel_init=dense_init, dtype=dtype, param_dtype=param_dtype, name=name)(x)


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
    kernels.check(module.kernels, f"{model}: kernels")
    if module.num_classes < 0:
        raise ValueError(f"{model}: num_classes must be >= 0 (0 = no classifier), got {module.num_classes}")


def check_depths(depths, model: str, stages: str) -> None:
    """`depths` (blocks per stage, for v4 and Inception-ResNet): three counts of at least 1 each."""
    whole = lambda d: isinstance(d, numbers.Integral) and not isinstance(d, bool)
    if len(depths) != 3 or not all(whole(d) and d >= 1 for d in depths):
        raise ValueError(f"{model}: depths takes 3 whole numbers >= 1 (the {stages}), got {depths!r}")


@functools.cache
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
    options = dict(
        padding_mode=module.padding_mode,
        bn_momentum=module.bn_momentum,
        bn_epsilon=module.bn_epsilon,
        bn_use_scale=getattr(module, "bn_use_scale", True),
        dtype=module.dtype,
        param_dtype=module.param_dtype,
    )
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
