"""BN-Inception (Ioffe & Szegedy 2015, arXiv:1502.03167), as TF-slim releases it under the name `inception_v2`.

Not the "Inception-v2" of Rethinking (REFERENCES.md §1.2). No PyTorch reference has this graph, so it
follows slim's `inception_v2.py`: separable 7x7 stem, double-3x3 modules, 'SAME' padding everywhere
(asymmetric for stride 2 on even sizes), and slim's scope names, so a slim checkpoint maps over by name
(REFERENCES.md §3.1, §3.2, §3.4). What the switches and options mean: REFERENCES.md §3.9.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from inception_jax.models import layers
from inception_jax.models.layers import Dtype, PaddingMode
from inception_jax.models.registry import FAMILY, INCEPTION_MEAN, INCEPTION_STD, DataConfig, register_model

# Stride-1 modules: 1x1, (3x3 reduce, 3x3), (double-3x3 reduce, double 3x3), pool, pool projection.
INCEPTION_BLOCKS = {
    "Mixed_3b": (64, (64, 64), (64, 96), "avg", 32),
    "Mixed_3c": (64, (64, 96), (64, 96), "avg", 64),
    "Mixed_4b": (224, (64, 96), (96, 128), "avg", 128),
    "Mixed_4c": (192, (96, 128), (96, 128), "avg", 128),
    "Mixed_4d": (160, (128, 160), (128, 160), "avg", 96),
    "Mixed_4e": (96, (128, 192), (160, 192), "avg", 96),
    "Mixed_5b": (352, (192, 320), (160, 224), "avg", 128),
    "Mixed_5c": (352, (192, 320), (192, 224), "max", 128),
}
# Stride-2 modules: (3x3 reduce, 3x3/2), (double-3x3 reduce, double 3x3 ending with stride 2).
_REDUCTION_CFG = {
    "Mixed_4a": ((128, 160), (64, 96)),
    "Mixed_5a": ((128, 192), (192, 256)),
}
_ORDER = (
    "Mixed_3b",
    "Mixed_3c",
    "Mixed_4a",
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_5a",
    "Mixed_5b",
    "Mixed_5c",
)
_STEM_DEPTH_MULTIPLIER = 8  # cap on the stem's depthwise channel multiplier: slim's min(int(depth(64) / 3), 8)
# With 'SAME' (or k // 2) padding every op maps n -> ceil(n / stride) >= 1, so any size runs.
_MIN_INPUT_SIZE = 1

ConvSpec = tuple[str, int, int, int]  # (slim scope name, out channels, kernel, stride)


def _double_3x3(features: int, stride: int, factorize: bool) -> tuple[ConvSpec, ...]:
    """The "5x5" path after its 1x1 reduction: two 3x3 convs (slim), or one 5x5 when not factorised."""
    if factorize:
        last = "Conv2d_0c_3x3" if stride == 1 else "Conv2d_1a_3x3"
        return (("Conv2d_0b_3x3", features, 3, 1), (last, features, 3, stride))
    return (("Conv2d_0b_5x5" if stride == 1 else "Conv2d_1a_5x5", features, 5, stride),)


class Branch(nn.Module):
    """One branch of a module: an optional 3x3/1 pool, then convs named by their slim scopes."""

    convs: Sequence[ConvSpec]
    conv: Any  # layers.bound_conv(): ConvBN with the network's options bound and widths scaled
    pool: str | None = None  # "avg" | "max" | None
    padding_mode: PaddingMode = "tf"
    count_include_pad: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.pool == "avg":
            x = layers.avg_pool(x, 3, 1, 1, count_include_pad=self.count_include_pad, padding_mode=self.padding_mode)
        elif self.pool == "max":
            x = layers.max_pool(x, 3, 1, 1, padding_mode=self.padding_mode)
        for name, features, kernel, stride in self.convs:
            x = self.conv(features, kernel, strides=stride, padding=kernel // 2, name=name)(x, train)
        return x


class InceptionModule(nn.Module):
    """Stride-1 module (BN paper appendix, Figure 5): 1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool-1x1."""

    ch1x1: int
    ch3x3: tuple[int, int]
    double3x3: tuple[int, int]
    pool: str
    pool_proj: int
    conv: Any
    factorize_5x5: bool = True
    padding_mode: PaddingMode = "tf"
    count_include_pad: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        branch = functools.partial(
            Branch, conv=self.conv, padding_mode=self.padding_mode, count_include_pad=self.count_include_pad
        )
        (red3, ch3), (red5, ch5) = self.ch3x3, self.double3x3
        return layers.concat(
            [
                branch((("Conv2d_0a_1x1", self.ch1x1, 1, 1),), name="Branch_0")(x, train),
                branch((("Conv2d_0a_1x1", red3, 1, 1), ("Conv2d_0b_3x3", ch3, 3, 1)), name="Branch_1")(x, train),
                branch((("Conv2d_0a_1x1", red5, 1, 1), *_double_3x3(ch5, 1, self.factorize_5x5)), name="Branch_2")(
                    x, train
                ),
                branch((("Conv2d_0b_1x1", self.pool_proj, 1, 1),), pool=self.pool, name="Branch_3")(x, train),
            ]
        )


class ReductionModule(nn.Module):
    """Stride-2 module (Mixed_4a, Mixed_5a): 1x1-3x3/2 | 1x1-3x3-3x3/2 | max pool 3x3/2."""

    ch3x3: tuple[int, int]
    double3x3: tuple[int, int]
    conv: Any
    factorize_5x5: bool = True
    padding_mode: PaddingMode = "tf"

    @nn.compact
    def __call__(self, x, train: bool = False):
        branch = functools.partial(Branch, conv=self.conv, padding_mode=self.padding_mode)
        (red3, ch3), (red5, ch5) = self.ch3x3, self.double3x3
        return layers.concat(
            [
                branch((("Conv2d_0a_1x1", red3, 1, 1), ("Conv2d_1a_3x3", ch3, 3, 2)), name="Branch_0")(x, train),
                branch((("Conv2d_0a_1x1", red5, 1, 1), *_double_3x3(ch5, 2, self.factorize_5x5)), name="Branch_1")(
                    x, train
                ),
                layers.max_pool(x, 3, 2, 1, padding_mode=self.padding_mode),  # Branch_2/MaxPool_1a_3x3
            ]
        )


class SeparableConvBN(nn.Module):
    """slim `separable_conv2d` + BN + ReLU: a depthwise conv with channel multiplier `depth_multiplier`
    (no bias, no BN), then a pointwise 1x1 ConvBN. Depthwise output channel i*m + j reads input i.
    """

    features: int
    kernel_size: int
    strides: int
    depth_multiplier: int
    conv: Any
    padding_mode: PaddingMode = "tf"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        channels = x.shape[-1]
        x = layers.Conv(
            channels * self.depth_multiplier,
            (self.kernel_size, self.kernel_size),
            strides=self.strides,
            padding=layers.resolve_padding(self.kernel_size // 2, self.padding_mode),
            feature_group_count=channels,
            use_bias=False,
            kernel_init=layers.conv_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="depthwise",
        )(x)
        return self.conv(self.features, 1, name="pointwise")(x, train)


class Logits(nn.Module):
    """slim's `Logits` scope: global average pool (slim's `global_pool=True`; its default fixed 7x7 pool
    is the same at 224 px), dropout, 1x1 conv with bias (here a Dense; none when `num_classes=0`)."""

    num_classes: int
    dropout_rate: float = 0.2
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        pre_logits = layers.global_avg_pool(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(pre_logits)
        if self.num_classes:
            x = layers.classifier(
                x, self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="Conv2d_1c_1x1"
            )
        return x, pre_logits


class BNInception(nn.Module):
    """BN-Inception / TF-slim `inception_v2`.

    Takes NHWC images normalised with mean = std = 0.5; returns `(logits, out)`: `out["pre_logits"]`,
    the pooled 1024-d features before dropout; `out["aux_logits"]`, always `()` (no aux head); with
    `return_endpoints=True`, every stage by slim's end-point name: `Conv2d_1a_7x7`, `Conv2d_2b_1x1`,
    `Conv2d_2c_3x3`, `Mixed_3b` ... `Mixed_5c`.
    """

    num_classes: int = 1000
    aux_logits: bool = False  # common interface only: BN-Inception has no aux head
    dropout_rate: float = 0.2  # slim dropout_keep_prob 0.8
    factorize_5x5: bool = True  # False: one 5x5 conv in place of each double 3x3 (BN paper ablation)
    bn_use_scale: bool = True  # timm style; slim checkpoints (scale=False) need False
    remat: bool = False  # gradient checkpointing per Inception block (layers.remat_if): less memory, more compute
    kernels: str = "auto"  # CPU forms or XLA's operations (inception_jax.kernels); "auto" by platform
    width_multiplier: float = 1.0  # TF-slim's depth_multiplier (every conv width scaled, min 16)
    bn_momentum: float = 0.9  # Flax convention (PyTorch's 0.1); slim trains with 0.9997
    bn_epsilon: float = 1e-3
    padding_mode: PaddingMode = "tf"  # "torch": k // 2 on every op, same sizes but another sampling grid
    avg_pool_count_include_pad: bool = False  # slim (TF 'SAME') excludes padding from the count
    in_channels: int = 3
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    num_aux_heads = 0
    min_input_size = _MIN_INPUT_SIZE

    @nn.compact
    @layers.kernel_scope
    def __call__(self, x, train: bool = False, return_endpoints: bool = False):
        layers.check_common_options(self, "bn_inception")
        layers.check_input(x, model="bn_inception", min_size=_MIN_INPUT_SIZE, in_channels=self.in_channels)
        conv, pm = layers.bound_conv(self), self.padding_mode
        out: dict[str, Any] = {}

        def stage(module, x):
            y = module(x, train)
            if return_endpoints:
                out[module.name] = y
            return y

        # slim: depthwise_multiplier = min(int(depth(64) / 3), 8), so that 3 * m <= the pointwise width.
        multiplier = min(layers.scaled_depth(64, self.width_multiplier) // 3, _STEM_DEPTH_MULTIPLIER)
        x = stage(
            SeparableConvBN(
                64, 7, 2, multiplier, conv, pm, dtype=self.dtype, param_dtype=self.param_dtype, name="Conv2d_1a_7x7"
            ),
            x,
        )
        x = layers.max_pool(x, 3, 2, 1, padding_mode=pm)  # MaxPool_2a_3x3
        x = stage(conv(64, 1, name="Conv2d_2b_1x1"), x)
        x = stage(conv(192, 3, padding=1, name="Conv2d_2c_3x3"), x)
        x = layers.max_pool(x, 3, 2, 1, padding_mode=pm)  # MaxPool_3a_3x3

        for name in _ORDER:
            if name in _REDUCTION_CFG:
                block = layers.remat_if(ReductionModule, self.remat)(
                    *_REDUCTION_CFG[name], conv=conv, factorize_5x5=self.factorize_5x5, padding_mode=pm, name=name
                )
            else:
                block = layers.remat_if(InceptionModule, self.remat)(
                    *INCEPTION_BLOCKS[name],
                    conv=conv,
                    factorize_5x5=self.factorize_5x5,
                    padding_mode=pm,
                    count_include_pad=self.avg_pool_count_include_pad,
                    name=name,
                )
            x = stage(block, x)

        logits, out["pre_logits"] = Logits(
            self.num_classes, self.dropout_rate, dtype=self.dtype, param_dtype=self.param_dtype, name="Logits"
        )(x, train)
        out["aux_logits"] = ()
        return logits, out


@register_model(
    "bn_inception",
    tags=(FAMILY,),
    data=DataConfig(
        input_size=224,
        min_input_size=_MIN_INPUT_SIZE,
        crop_pct=0.875,
        interpolation="bilinear",
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
    ),
    description="BN-Inception (TF-slim inception_v2): separable 7x7 stem, double-3x3 modules, 'SAME' padding",
)
def bn_inception(**overrides) -> BNInception:
    return BNInception(**overrides)
