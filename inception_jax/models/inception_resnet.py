"""Inception-ResNet-v1 and -v2 (Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the Impact of
Residual Connections on Learning", arXiv:1602.07261).

`inception_resnet_v2` is timm's `inception_resnet_v2` layer for layer, with its module names, so its
weights load by name (`tools.convert.from_torch`); like the released TF graph it has v3's stem plus
`mixed_5b`, not the paper's, and scaled residuals (REFERENCES.md §2.4, §3.1). `inception_resnet_v1` is
the paper's network, which nobody ships for ImageNet, on facenet's layout (REFERENCES.md §3.8).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from inception_jax.models import layers, stacking
from inception_jax.models.inception_v4 import (
    MIN_INPUT_SIZE,
    ReductionA,
    SlimAuxHead,
    avg_pool_3x3,
    max_pool_3x3_s2,
    nxn_pair,
)
from inception_jax.models.layers import Dtype, PaddingMode
from inception_jax.models.registry import FAMILY, INCEPTION_MEAN, INCEPTION_STD, DataConfig, register_model

RESIDUAL_SCALES = (0.17, 0.10, 0.20)  # TF-slim / timm / Keras (REFERENCES.md §2.4; v4 paper section 3.3)


# --------------------------------------------------------------------------------------- blocks


def residual(module: nn.Module, x, branches: Sequence, scale: float, relu: bool = True):
    """`x + scale * conv2d(concat(branches))`, then ReLU: the Inception-ResNet block body (Figs. 10-13,
    16-19). `conv2d` is the linear 1x1 "up" conv back to the trunk width, biased and without BN (TF-slim,
    timm); it is created in the calling block's scope, as timm's `Block35.conv2d`.
    """
    mixed = layers.concat(branches)
    up = layers.Conv(
        x.shape[-1],
        (1, 1),
        use_bias=True,
        kernel_init=layers.conv_init,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        name="conv2d",
    )(mixed)
    x = up * scale + x
    return nn.relu(x) if relu else x


class Block35(nn.Module):
    """35x35 Inception-ResNet-A: 1x1 b0 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3, then the scaled residual.

    widths = (b0, b1_0, b1_1, b2_0, b2_1, b2_2): IR-v2 (32, 32, 32, 32, 48, 64) (Fig. 16);
    IR-v1 (32, 32, 32, 32, 32, 32) (Fig. 10).
    """

    widths: tuple[int, ...]
    scale: float
    conv: Any
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, w = self.conv, self.widths
        b0 = conv(w[0], 1, name="branch0")(x, train)
        b1 = conv(w[1], 1, name="branch1_0")(x, train)
        b1 = conv(w[2], 3, padding=1, name="branch1_1")(b1, train)
        b2 = conv(w[3], 1, name="branch2_0")(x, train)
        b2 = conv(w[4], 3, padding=1, name="branch2_1")(b2, train)
        b2 = conv(w[5], 3, padding=1, name="branch2_2")(b2, train)
        return residual(self, x, [b0, b1, b2], self.scale)


class Block17(nn.Module):
    """17x17 Inception-ResNet-B: 1x1 b0 | 1x1 -> 1x7 -> 7x1, then the scaled residual.

    widths = (b0, b1_0, b1_1, b1_2): IR-v2 (192, 128, 160, 192) (Fig. 17); IR-v1 (128, 128, 128, 128)
    (Fig. 11).
    """

    widths: tuple[int, ...]
    scale: float
    conv: Any
    factorize: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, w = self.conv, self.widths
        b0 = conv(w[0], 1, name="branch0")(x, train)
        b1 = conv(w[1], 1, name="branch1_0")(x, train)
        b1 = nxn_pair(
            conv,
            b1,
            train,
            n=7,
            mid=w[2],
            out=w[3],
            names=("branch1_1", "branch1_2"),
            row_first=True,
            factorize=self.factorize,
        )
        return residual(self, x, [b0, b1], self.scale)


class Block8(nn.Module):
    """8x8 Inception-ResNet-C: 1x1 b0 | 1x1 -> 1x3 -> 3x1, then the scaled residual (ReLU optional).

    widths = (b0, b1_0, b1_1, b1_2): IR-v2 (192, 192, 224, 256) (Fig. 19); IR-v1 (192, 192, 192, 192)
    (Fig. 13).
    """

    widths: tuple[int, ...]
    scale: float
    conv: Any
    relu: bool = True
    factorize: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, w = self.conv, self.widths
        b0 = conv(w[0], 1, name="branch0")(x, train)
        b1 = conv(w[1], 1, name="branch1_0")(x, train)
        b1 = nxn_pair(
            conv,
            b1,
            train,
            n=3,
            mid=w[2],
            out=w[3],
            names=("branch1_1", "branch1_2"),
            row_first=True,
            factorize=self.factorize,
        )
        return residual(self, x, [b0, b1], self.scale, self.relu)


class Mixed5b(nn.Module):
    """IR-v2's 35x35 entry block (TF-slim Mixed_5b): 1x1 96 | 1x1 48 -> 5x5 64 |
    1x1 64 -> 3x3 96 -> 3x3 96 | avg 3x3 (padding excluded) -> 1x1 64; 320 channels."""

    conv: Any
    padding_mode: PaddingMode = "torch"
    count_include_pad: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = self.conv
        b0 = conv(96, 1, name="branch0")(x, train)
        b1 = conv(48, 1, name="branch1_0")(x, train)
        b1 = conv(64, 5, padding=2, name="branch1_1")(b1, train)
        b2 = conv(64, 1, name="branch2_0")(x, train)
        b2 = conv(96, 3, padding=1, name="branch2_1")(b2, train)
        b2 = conv(96, 3, padding=1, name="branch2_2")(b2, train)
        b3 = conv(64, 1, name="branch3_1")(avg_pool_3x3(x, self.padding_mode, self.count_include_pad), train)
        return layers.concat([b0, b1, b2, b3])


class ReductionB(nn.Module):
    """17 -> 8 reduction for Inception-ResNet (Figs. 12 and 18; TF-slim Mixed_7a):
    1x1 256 -> 3x3/2 b0 | 1x1 256 -> 3x3/2 b1 | 1x1 256 -> 3x3 b2a -> 3x3/2 b2b | maxpool 3x3/2.

    widths = (b0, b1, b2a, b2b): IR-v2 (384, 288, 288, 320); IR-v1 (384, 256, 256, 256).
    """

    widths: tuple[int, ...]
    conv: Any
    padding_mode: PaddingMode = "torch"

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, w = self.conv, self.widths
        b0 = conv(256, 1, name="branch0_0")(x, train)
        b0 = conv(w[0], 3, strides=2, name="branch0_1")(b0, train)
        b1 = conv(256, 1, name="branch1_0")(x, train)
        b1 = conv(w[1], 3, strides=2, name="branch1_1")(b1, train)
        b2 = conv(256, 1, name="branch2_0")(x, train)
        b2 = conv(w[2], 3, padding=1, name="branch2_1")(b2, train)
        b2 = conv(w[3], 3, strides=2, name="branch2_2")(b2, train)
        return layers.concat([b0, b1, b2, max_pool_3x3_s2(x, self.padding_mode)])


# ---------------------------------------------------------------------------------------- models


class _InceptionResNet(nn.Module):
    """Fields and helpers shared by both variants (the family's common options plus the IR ones)."""

    num_classes: int = 1000
    aux_logits: bool = False
    dropout_rate: float = 0.0
    residual_scales: tuple[float, float, float] = RESIDUAL_SCALES  # 35x35, 17x17, 8x8; IR-v2's last block8: 1.0
    factorize_nxn: bool = True
    # timm/TF exclude padding; True counts it (PyTorch default). Only IR-v2's Mixed_5b has a padded
    # average pool: IR-v1 has none, so there the switch changes nothing.
    avg_pool_count_include_pad: bool = False
    width_multiplier: float = 1.0  # TF-slim's depth_multiplier (min depth 16); the trunk widths follow
    bn_momentum: float = 0.9  # Flax convention: PyTorch's momentum 0.1
    bn_epsilon: float = 1e-3
    bn_use_scale: bool = True  # False: BatchNorm without gamma, as Keras and TF-slim build it
    remat: bool = False  # gradient checkpointing per Inception block (layers.remat_if): less memory, more compute
    scan_blocks: bool = False  # each stage's identical blocks as one nn.scan (models/stacking.py): faster compiles
    kernels: str = "auto"  # CPU forms or XLA's operations (inception_jax.kernels); "auto" by platform
    padding_mode: PaddingMode = "torch"  # identical here: every padded op is stride 1 with an odd kernel
    in_channels: int = 3
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @property
    def num_aux_heads(self) -> int:
        return 1 if self.aux_logits and self.num_classes > 0 else 0

    @property
    def min_input_size(self) -> int:
        return MIN_INPUT_SIZE

    def _check(self, x, model: str):
        layers.check_common_options(self, model)
        layers.check_depths(self.depths, model, "35x35, 17x17 and 8x8 residual blocks")
        if len(self.residual_scales) != 3:
            raise ValueError(
                f"{model}: residual_scales takes 3 floats (35x35, 17x17, 8x8 blocks), got {self.residual_scales!r}"
            )
        layers.check_input(x, model=model, min_size=MIN_INPUT_SIZE, in_channels=self.in_channels)

    def _stem(self, conv, x, train, endpoint):
        """conv 3x3/2 32 -> 3x3 32 -> 3x3 64 (padded) -> maxpool 3x3/2 -> 1x1 80 -> 3x3 192 (all VALID
        but the 64): IR-v2's released stem = Inception-v3's = the start of the paper's Fig. 14."""
        x = endpoint("conv2d_1a", conv(32, 3, strides=2, name="conv2d_1a")(x, train))
        x = endpoint("conv2d_2a", conv(32, 3, name="conv2d_2a")(x, train))
        x = endpoint("conv2d_2b", conv(64, 3, padding=1, name="conv2d_2b")(x, train))
        x = max_pool_3x3_s2(x, self.padding_mode)  # maxpool_3a
        x = endpoint("conv2d_3b", conv(80, 1, name="conv2d_3b")(x, train))
        return endpoint("conv2d_4a", conv(192, 3, name="conv2d_4a")(x, train))

    def block_groups(self) -> list[list[str]]:
        """The names of the 35x35, 17x17 and 8x8 residual blocks (`stacking`: scanned as one module each);
        IR-v2's final `block8`, without ReLU, is not one of them."""
        n35, n17, n8 = self.depths
        return [
            stacking.block_names("repeat_", 0, n35),
            stacking.block_names("repeat_1_", 0, n17),
            stacking.block_names("repeat_2_", 0, n8),
        ]

    def _repeat(self, block, names, x, train):
        return stacking.run_blocks(block, names, x, train, scan=self.scan_blocks)

    def _aux(self, conv, x, train, aux: list):
        if self.num_aux_heads and (train or self.is_initializing()):
            logits = SlimAuxHead(self.num_classes, conv, self.dtype, self.param_dtype, name="AuxLogits")(x, train)
            if train:
                aux.append(logits)


def _endpoint_recorder(out: dict, enabled: bool):
    def endpoint(name, x):
        if enabled:
            out[name] = x
        return x

    return endpoint


class InceptionResNetV2(_InceptionResNet):
    """Inception-ResNet-v2 (timm `inception_resnet_v2`).

    Takes NHWC images normalised with mean = std = 0.5; returns `(logits, out)`: `out["pre_logits"]`,
    the pooled 1536-d features before dropout; `out["aux_logits"]`, the aux head's logits in train mode
    (else `()`); with `return_endpoints=True`, every stage named as timm's `layer_names`: `conv2d_1a`,
    `conv2d_2a`, `conv2d_2b`, `conv2d_3b`, `conv2d_4a`, `mixed_5b`, `repeat`, `mixed_6a`, `repeat_1`,
    `mixed_7a`, `repeat_2`, `block8`, `conv2d_7b` (timm's feature_info taps: `conv2d_2b`, `conv2d_4a`,
    `repeat`, `repeat_1`, `conv2d_7b`, at strides 2 to 32).
    """

    depths: tuple[int, int, int] = (10, 20, 9)  # the released graph's Repeat, Repeat_1, Repeat_2

    @nn.compact
    @layers.kernel_scope
    def __call__(self, x, train: bool = False, return_endpoints: bool = False):
        self._check(x, "inception_resnet_v2")
        conv, pm, f = layers.bound_conv(self), self.padding_mode, self.factorize_nxn
        s35, s17, s8 = self.residual_scales
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        out: dict[str, Any] = {}
        endpoint = _endpoint_recorder(out, return_endpoints)
        aux: list = []

        x = self._stem(conv, x, train, endpoint)
        x = max_pool_3x3_s2(x, pm)  # maxpool_5a
        r = functools.partial(layers.remat_if, enabled=self.remat)
        x = endpoint("mixed_5b", r(Mixed5b)(conv, pm, self.avg_pool_count_include_pad, name="mixed_5b")(x, train))
        blocks35, blocks17, blocks8 = self.block_groups()
        x = self._repeat(functools.partial(r(Block35), (32, 32, 32, 32, 48, 64), s35, conv, **dt), blocks35, x, train)
        x = endpoint("repeat", x)
        x = endpoint("mixed_6a", r(ReductionA)(256, 256, 384, 384, conv, pm, name="mixed_6a")(x, train))
        x = self._repeat(functools.partial(r(Block17), (192, 128, 160, 192), s17, conv, f, **dt), blocks17, x, train)
        x = endpoint("repeat_1", x)
        self._aux(conv, x, train, aux)  # slim's PreAuxLogits
        x = endpoint("mixed_7a", r(ReductionB)((384, 288, 288, 320), conv, pm, name="mixed_7a")(x, train))
        x = self._repeat(functools.partial(r(Block8), (192, 192, 224, 256), s8, conv, True, f, **dt), blocks8, x, train)
        x = endpoint("repeat_2", x)
        x = endpoint("block8", r(Block8)((192, 192, 224, 256), 1.0, conv, False, f, **dt, name="block8")(x, train))
        x = endpoint("conv2d_7b", conv(1536, 1, name="conv2d_7b")(x, train))
        logits = layers.classifier_head(self, x, train, out, "classif")
        out["aux_logits"] = tuple(aux)
        return logits, out


class InceptionResNetV1(_InceptionResNet):
    """Inception-ResNet-v1, the v4 paper's configuration (REFERENCES.md §3.8).

    Returns `(logits, out)` as IR-v2 does; `pre_logits` is 1792-d. Endpoints with `return_endpoints=True`,
    in network order: `conv2d_1a`, `conv2d_2a`, `conv2d_2b` (stride 2), `conv2d_3b`, `conv2d_4a` (4),
    `conv2d_4b`, `repeat` (8), `mixed_6a`, `repeat_1` (16), `mixed_7a`, `repeat_2` (32).
    """

    dropout_rate: float = 0.2  # the paper's keep_prob 0.8 (Fig. 15); no library reference to follow
    depths: tuple[int, int, int] = (5, 10, 5)  # Fig. 15's 5 x A, 10 x B, 5 x C

    @nn.compact
    @layers.kernel_scope
    def __call__(self, x, train: bool = False, return_endpoints: bool = False):
        self._check(x, "inception_resnet_v1")
        conv, pm, f = layers.bound_conv(self), self.padding_mode, self.factorize_nxn
        s35, s17, s8 = self.residual_scales
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        out: dict[str, Any] = {}
        endpoint = _endpoint_recorder(out, return_endpoints)
        aux: list = []

        x = self._stem(conv, x, train, endpoint)
        r = functools.partial(layers.remat_if, enabled=self.remat)
        x = endpoint("conv2d_4b", conv(256, 3, strides=2, name="conv2d_4b")(x, train))  # Fig. 14: 35x35x256
        blocks35, blocks17, blocks8 = self.block_groups()
        x = self._repeat(functools.partial(r(Block35), (32,) * 6, s35, conv, **dt), blocks35, x, train)
        x = endpoint("repeat", x)
        x = endpoint("mixed_6a", r(ReductionA)(192, 192, 256, 384, conv, pm, name="mixed_6a")(x, train))  # 17x17x896
        x = self._repeat(functools.partial(r(Block17), (128,) * 4, s17, conv, f, **dt), blocks17, x, train)
        x = endpoint("repeat_1", x)
        self._aux(conv, x, train, aux)
        x = endpoint("mixed_7a", r(ReductionB)((384, 256, 256, 256), conv, pm, name="mixed_7a")(x, train))  # 8x8x1792
        x = self._repeat(functools.partial(r(Block8), (192,) * 4, s8, conv, True, f, **dt), blocks8, x, train)
        x = endpoint("repeat_2", x)
        logits = layers.classifier_head(self, x, train, out, "classif")
        out["aux_logits"] = tuple(aux)
        return logits, out


_DATA = dict(
    input_size=299, min_input_size=MIN_INPUT_SIZE, interpolation="bicubic", mean=INCEPTION_MEAN, std=INCEPTION_STD
)


@register_model(
    "inception_resnet_v2",
    tags=(FAMILY,),
    data=DataConfig(crop_pct=0.8975, **_DATA),  # timm's default cfg
    description="Inception-ResNet-v2 (timm inception_resnet_v2, the TF-slim port)",
    torch_reference="timm inception_resnet_v2",
)
def inception_resnet_v2(**overrides) -> InceptionResNetV2:
    return InceptionResNetV2(**overrides)


@register_model(
    "inception_resnet_v1",
    tags=(FAMILY,),
    data=DataConfig(crop_pct=0.875, **_DATA),  # TF-slim's eval central crop; no released weights
    description="Inception-ResNet-v1 (the v4 paper's configuration; no reference weights)",
)
def inception_resnet_v1(**overrides) -> InceptionResNetV1:
    return InceptionResNetV1(**overrides)


__all__ = ["InceptionResNetV1", "InceptionResNetV2", "inception_resnet_v1", "inception_resnet_v2"]
