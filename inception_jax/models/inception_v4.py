"""Inception-v4 (Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", arXiv:1602.07261), layer for layer as timm's `inception_v4`.

Module names follow timm's state_dict (`features_0` ... `features_21`, `branch1_0`, `last_linear`), so
`tools.convert.from_torch` loads its weights by name; VALID stride-2 ops, pools that exclude padding and
BN eps 1e-3 as timm and TF-slim (REFERENCES.md §3.1, §3.2). Stage-to-figure map: REFERENCES.md §3.6.
TF-slim's aux head, `factorize_nxn` and `depths` go beyond timm (REFERENCES.md §3.8).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from inception_jax.models import layers, stacking
from inception_jax.models.layers import Dtype, PaddingMode
from inception_jax.models.registry import FAMILY, INCEPTION_MEAN, INCEPTION_STD, DataConfig, register_model

MIN_INPUT_SIZE = 75  # 74 leaves Reduction-B's 3x3/2 VALID ops an empty map (REFERENCES.md §3.5).


# --------------------------------------------------------------------------------- shared helpers


def nxn_pair(conv, x, train, *, n: int, mid: int, out: int, names: tuple[str, str], row_first: bool, factorize: bool):
    """A 1xn then nx1 conv (`row_first`) or the reverse; with `factorize=False`, one nxn conv.

    The unfactorised conv has the pair's output width and the first conv's name.
    """
    p = n // 2
    if not factorize:
        return conv(out, n, padding=p, name=names[0])(x, train)
    first, first_pad = ((1, n), (0, p)) if row_first else ((n, 1), (p, 0))
    x = conv(mid, first, padding=first_pad, name=names[0])(x, train)
    return conv(out, first[::-1], padding=first_pad[::-1], name=names[1])(x, train)


def split_1x3_3x1(conv, x, train, *, width: int, names: tuple[str, str], merged: str, factorize: bool):
    """Inception-C's parallel 1x3 | 3x1 convs, concatenated (v4 paper Fig. 6, "expanded filter bank").

    With `factorize=False`, one 3x3 conv of twice the width, named `merged`.
    """
    if not factorize:
        return conv(2 * width, 3, padding=1, name=merged)(x, train)
    a = conv(width, (1, 3), padding=(0, 1), name=names[0])(x, train)
    b = conv(width, (3, 1), padding=(1, 0), name=names[1])(x, train)
    return layers.concat([a, b])


def avg_pool_3x3(x, padding_mode: PaddingMode, count_include_pad: bool = False):
    """The pool branch's 3x3/1 average; timm v4/IR-v2 (= TF 'SAME') exclude the padding from the count."""
    return layers.avg_pool(x, 3, 1, 1, count_include_pad=count_include_pad, padding_mode=padding_mode)


def max_pool_3x3_s2(x, padding_mode: PaddingMode):
    return layers.max_pool(x, 3, 2, 0, padding_mode=padding_mode)


class SlimAuxHead(nn.Module):
    """TF-slim's v4 / IR-v2 auxiliary classifier (slim `inception_v4.py`, `inception_resnet_v2.py`).

    avg pool 5x5/3 VALID -> 1x1 conv 128 -> conv 768 with a kernel covering the whole pooled map,
    VALID -> flatten -> dense. That kernel follows the input size, so init and apply at one size. The
    pool window shrinks to the map when the map is smaller than 5 (inputs below 107 px).
    Children follow torchvision's v3 `AuxLogits` names: `conv0`, `conv1`, `fc`.
    """

    num_classes: int
    conv: Any  # ConvBN with the network's options bound
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        window = (min(5, x.shape[1]), min(5, x.shape[2]))
        x = layers.avg_pool(x, window, 3, 0, count_include_pad=False)
        x = self.conv(128, 1, name="conv0")(x, train)
        x = self.conv(768, tuple(x.shape[1:3]), name="conv1")(x, train)
        x = x.reshape(x.shape[0], -1)
        return layers.classifier(x, self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")


# --------------------------------------------------------------------------------------- blocks


class Mixed3a(nn.Module):
    """Stem concat 1 (Fig. 3): maxpool 3x3/2 | conv 3x3/2 96, both VALID."""

    conv: Any
    padding_mode: PaddingMode = "torch"

    @nn.compact
    def __call__(self, x, train: bool = False):
        pooled = max_pool_3x3_s2(x, self.padding_mode)
        return layers.concat([pooled, self.conv(96, 3, strides=2, name="conv")(x, train)])


class Mixed4a(nn.Module):
    """Stem concat 2 (Fig. 3): 1x1 64 -> 3x3 96 | 1x1 64 -> 1x7 64 -> 7x1 64 -> 3x3 96 (3x3s VALID)."""

    conv: Any
    factorize: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = self.conv
        b0 = conv(64, 1, name="branch0_0")(x, train)
        b0 = conv(96, 3, name="branch0_1")(b0, train)
        b1 = conv(64, 1, name="branch1_0")(x, train)
        b1 = nxn_pair(
            conv,
            b1,
            train,
            n=7,
            mid=64,
            out=64,
            names=("branch1_1", "branch1_2"),
            row_first=True,
            factorize=self.factorize,
        )
        b1 = conv(96, 3, name="branch1_3")(b1, train)
        return layers.concat([b0, b1])


class Mixed5a(nn.Module):
    """Stem concat 3 (Fig. 3): conv 3x3/2 192 | maxpool 3x3/2, both VALID."""

    conv: Any
    padding_mode: PaddingMode = "torch"

    @nn.compact
    def __call__(self, x, train: bool = False):
        return layers.concat(
            [self.conv(192, 3, strides=2, name="conv")(x, train), max_pool_3x3_s2(x, self.padding_mode)]
        )


class InceptionA(nn.Module):
    """35x35 Inception-A (Fig. 4): 1x1 96 | 1x1 64 -> 3x3 96 | 1x1 64 -> 3x3 96 -> 3x3 96 | avg -> 1x1 96."""

    conv: Any
    padding_mode: PaddingMode = "torch"
    count_include_pad: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = self.conv
        b0 = conv(96, 1, name="branch0")(x, train)
        b1 = conv(64, 1, name="branch1_0")(x, train)
        b1 = conv(96, 3, padding=1, name="branch1_1")(b1, train)
        b2 = conv(64, 1, name="branch2_0")(x, train)
        b2 = conv(96, 3, padding=1, name="branch2_1")(b2, train)
        b2 = conv(96, 3, padding=1, name="branch2_2")(b2, train)
        b3 = conv(96, 1, name="branch3_1")(avg_pool_3x3(x, self.padding_mode, self.count_include_pad), train)
        return layers.concat([b0, b1, b2, b3])


class ReductionA(nn.Module):
    """35 -> 17 reduction (Fig. 7): 3x3/2 n | 1x1 k -> 3x3 l -> 3x3/2 m | maxpool 3x3/2.

    v4 uses k, l, m, n = 192, 224, 256, 384; Inception-ResNet-v1 192, 192, 256, 384 and IR-v2
    256, 256, 384, 384 (paper Table 1), which reuse this block as `mixed_6a`.
    """

    k: int
    l: int  # noqa: E741 (the paper's name)
    m: int
    n: int
    conv: Any
    padding_mode: PaddingMode = "torch"

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = self.conv
        b0 = conv(self.n, 3, strides=2, name="branch0")(x, train)
        b1 = conv(self.k, 1, name="branch1_0")(x, train)
        b1 = conv(self.l, 3, padding=1, name="branch1_1")(b1, train)
        b1 = conv(self.m, 3, strides=2, name="branch1_2")(b1, train)
        return layers.concat([b0, b1, max_pool_3x3_s2(x, self.padding_mode)])


class InceptionB(nn.Module):
    """17x17 Inception-B (Fig. 5): 1x1 384 | 1x1 192 -> 1x7 224 -> 7x1 256 |
    1x1 192 -> 7x1 192 -> 1x7 224 -> 7x1 224 -> 1x7 256 | avg -> 1x1 128."""

    conv: Any
    factorize: bool = True
    padding_mode: PaddingMode = "torch"
    count_include_pad: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, f = self.conv, self.factorize
        b0 = conv(384, 1, name="branch0")(x, train)
        b1 = conv(192, 1, name="branch1_0")(x, train)
        b1 = nxn_pair(
            conv, b1, train, n=7, mid=224, out=256, names=("branch1_1", "branch1_2"), row_first=True, factorize=f
        )
        b2 = conv(192, 1, name="branch2_0")(x, train)
        b2 = nxn_pair(
            conv, b2, train, n=7, mid=192, out=224, names=("branch2_1", "branch2_2"), row_first=False, factorize=f
        )
        b2 = nxn_pair(
            conv, b2, train, n=7, mid=224, out=256, names=("branch2_3", "branch2_4"), row_first=False, factorize=f
        )
        b3 = conv(128, 1, name="branch3_1")(avg_pool_3x3(x, self.padding_mode, self.count_include_pad), train)
        return layers.concat([b0, b1, b2, b3])


class ReductionB(nn.Module):
    """17 -> 8 reduction (Fig. 8): 1x1 192 -> 3x3/2 192 | 1x1 256 -> 1x7 256 -> 7x1 320 -> 3x3/2 320 |
    maxpool 3x3/2."""

    conv: Any
    factorize: bool = True
    padding_mode: PaddingMode = "torch"

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = self.conv
        b0 = conv(192, 1, name="branch0_0")(x, train)
        b0 = conv(192, 3, strides=2, name="branch0_1")(b0, train)
        b1 = conv(256, 1, name="branch1_0")(x, train)
        b1 = nxn_pair(
            conv,
            b1,
            train,
            n=7,
            mid=256,
            out=320,
            names=("branch1_1", "branch1_2"),
            row_first=True,
            factorize=self.factorize,
        )
        b1 = conv(320, 3, strides=2, name="branch1_3")(b1, train)
        return layers.concat([b0, b1, max_pool_3x3_s2(x, self.padding_mode)])


class InceptionC(nn.Module):
    """8x8 Inception-C (Fig. 6): 1x1 256 | 1x1 384 -> (1x3 256 | 3x1 256) |
    1x1 384 -> 3x1 448 -> 1x3 512 -> (1x3 256 | 3x1 256) | avg -> 1x1 256."""

    conv: Any
    factorize: bool = True
    padding_mode: PaddingMode = "torch"
    count_include_pad: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, f = self.conv, self.factorize
        b0 = conv(256, 1, name="branch0")(x, train)
        b1 = conv(384, 1, name="branch1_0")(x, train)
        b1 = split_1x3_3x1(
            conv, b1, train, width=256, names=("branch1_1a", "branch1_1b"), merged="branch1_1", factorize=f
        )
        b2 = conv(384, 1, name="branch2_0")(x, train)
        b2 = nxn_pair(
            conv, b2, train, n=3, mid=448, out=512, names=("branch2_1", "branch2_2"), row_first=False, factorize=f
        )
        b2 = split_1x3_3x1(
            conv, b2, train, width=256, names=("branch2_3a", "branch2_3b"), merged="branch2_3", factorize=f
        )
        b3 = conv(256, 1, name="branch3_1")(avg_pool_3x3(x, self.padding_mode, self.count_include_pad), train)
        return layers.concat([b0, b1, b2, b3])


# ---------------------------------------------------------------------------------------- model

DEPTHS = (4, 7, 3)  # Inception-A, -B, -C blocks (paper Fig. 9)


class InceptionV4(nn.Module):
    """Inception-v4 (timm `inception_v4` by default).

    Takes NHWC images normalised with mean = std = 0.5; returns `(logits, out)`: `out["pre_logits"]`,
    the pooled 1536-d features before dropout; `out["aux_logits"]`, the aux head's logits in train mode
    (else `()`); with `return_endpoints=True`, every stage by module name, `features_0` ... `features_21`
    (with `scan_blocks`, a scanned stage gives only its last block).
    """

    num_classes: int = 1000
    aux_logits: bool = False
    dropout_rate: float = 0.0  # timm's default; TF-slim trains with keep_prob 0.8
    factorize_nxn: bool = True
    avg_pool_count_include_pad: bool = False  # timm/TF exclude padding; True counts it (PyTorch default)
    width_multiplier: float = 1.0  # TF-slim's depth_multiplier (min depth 16)
    depths: tuple[int, int, int] = DEPTHS  # other depths shift the features_N indices after stage A
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

    @nn.compact
    @layers.kernel_scope
    def __call__(self, x, train: bool = False, return_endpoints: bool = False):
        layers.check_common_options(self, "inception_v4")
        layers.check_depths(self.depths, "inception_v4", "Inception-A, -B and -C blocks")
        layers.check_input(x, model="inception_v4", min_size=MIN_INPUT_SIZE, in_channels=self.in_channels)
        conv, pm, f = layers.bound_conv(self), self.padding_mode, self.factorize_nxn
        cip = self.avg_pool_count_include_pad
        r = functools.partial(layers.remat_if, enabled=self.remat)
        blocks_a, blocks_b, blocks_c = self.block_groups()
        out: dict[str, Any] = {}
        aux = []

        def endpoint(name, x):
            if return_endpoints:
                out[name] = x
            return x

        def run(module, x):
            return endpoint(module.name, module(x, train))

        def repeat(block, names, x):
            return stacking.run_blocks(block, names, x, train, scan=self.scan_blocks, endpoint=endpoint)

        # timm's `features` Sequential, indexed features_0 ... (stem: Fig. 3)
        x = run(conv(32, 3, strides=2, name="features_0"), x)
        x = run(conv(32, 3, name="features_1"), x)
        x = run(conv(64, 3, padding=1, name="features_2"), x)
        x = run(r(Mixed3a)(conv, pm, name="features_3"), x)
        x = run(r(Mixed4a)(conv, f, name="features_4"), x)
        x = run(r(Mixed5a)(conv, pm, name="features_5"), x)
        x = repeat(functools.partial(r(InceptionA), conv, pm, cip), blocks_a, x)  # Mixed_5b..e
        x = run(r(ReductionA)(192, 224, 256, 384, conv, pm, name=f"features_{6 + len(blocks_a)}"), x)  # Mixed_6a
        x = repeat(functools.partial(r(InceptionB), conv, f, pm, cip), blocks_b, x)  # Mixed_6b..h
        if self.num_aux_heads and (train or self.is_initializing()):  # after the last Inception-B
            logits = SlimAuxHead(self.num_classes, conv, self.dtype, self.param_dtype, name="AuxLogits")(x, train)
            if train:
                aux.append(logits)
        x = run(r(ReductionB)(conv, f, pm, name=f"features_{7 + len(blocks_a) + len(blocks_b)}"), x)  # Mixed_7a
        x = repeat(functools.partial(r(InceptionC), conv, f, pm, cip), blocks_c, x)  # Mixed_7b..d
        logits = layers.classifier_head(self, x, train, out, "last_linear")
        out["aux_logits"] = tuple(aux)
        return logits, out

    def block_groups(self) -> list[list[str]]:
        """The names of the Inception-A, -B and -C blocks (`stacking`: scanned as one module each)."""
        n_a, n_b, n_c = self.depths
        return [
            stacking.block_names("features_", 6, n_a),
            stacking.block_names("features_", 7 + n_a, n_b),
            stacking.block_names("features_", 8 + n_a + n_b, n_c),
        ]


@register_model(
    "inception_v4",
    tags=(FAMILY,),
    data=DataConfig(
        input_size=299,
        min_input_size=MIN_INPUT_SIZE,
        crop_pct=0.875,
        interpolation="bicubic",
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
    ),
    description="Inception-v4 (timm inception_v4, the TF-slim port)",
    torch_reference="timm inception_v4",
)
def inception_v4(**overrides) -> InceptionV4:
    return InceptionV4(**overrides)


__all__ = ["InceptionV4", "SlimAuxHead", "ReductionA", "inception_v4"]
