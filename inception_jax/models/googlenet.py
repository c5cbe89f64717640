"""GoogLeNet / Inception-v1 (Szegedy et al. 2014, "Going deeper with convolutions", arXiv:1409.4842).

The default is torchvision's `googlenet` (a port of the TF-slim checkpoint) layer for layer, with its
module names, so its weights load by name (`tools.convert.from_torch`), quirks included: ceil-mode
pools, a 2x2 maxpool4, a 3x3 conv in the "5x5" branch, BatchNorm and no LRN (REFERENCES.md §3.1,
§3.2). Switches give the 2014 paper's forms for its comparisons (REFERENCES.md §3.9).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from inception_jax.models import layers
from inception_jax.models.layers import Dtype, PaddingMode
from inception_jax.models.registry import FAMILY, INCEPTION_MEAN, INCEPTION_STD, DataConfig, register_model

# name: (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj), paper Table 1 = torchvision.
INCEPTION_BLOCKS = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}
# Stride-2 max pools after these modules, by window size: maxpool3 is 3x3, maxpool4 2x2 (torchvision, slim).
_POOL_AFTER = {"inception3b": 3, "inception4e": 2}
_AUX_AFTER = ("inception4a", "inception4d")  # aux1, aux2: paper Sec. 5, torchvision.
_MIN_INPUT_SIZE = 15  # torchvision's `min_size`: at 14, maxpool3 gets a 1x1 map and has no output.


class Inception(nn.Module):
    """One Inception module (paper Fig. 2): 1x1 | 1x1-3x3 | 1x1-kxk | maxpool 3x3/1-1x1, concatenated.

    Child names follow torchvision's `nn.Sequential` indices (branch2_0, branch2_1, branch4_1: index 0
    of branch4 is the pool). With `naive=True` the reductions and the pool projection are gone; the
    3x3 and kxk convs keep the names of their slots (branch2_1, branch3_1).
    """

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int
    conv: Any  # layers.bound_conv(): ConvBN with the network's options bound and widths scaled
    branch3_kernel: int = 3
    naive: bool = False
    padding_mode: PaddingMode = "torch"

    @nn.compact
    def __call__(self, x, train: bool = False):
        k = self.branch3_kernel
        branch1 = self.conv(self.ch1x1, 1, name="branch1")(x, train)
        if self.naive:
            branch2 = self.conv(self.ch3x3, 3, padding=1, name="branch2_1")(x, train)
            branch3 = self.conv(self.ch5x5, k, padding=k // 2, name="branch3_1")(x, train)
        else:
            branch2 = self.conv(self.ch3x3red, 1, name="branch2_0")(x, train)
            branch2 = self.conv(self.ch3x3, 3, padding=1, name="branch2_1")(branch2, train)
            branch3 = self.conv(self.ch5x5red, 1, name="branch3_0")(x, train)
            branch3 = self.conv(self.ch5x5, k, padding=k // 2, name="branch3_1")(branch3, train)
        branch4 = layers.max_pool(x, 3, 1, 1, ceil_mode=True, padding_mode=self.padding_mode)
        if not self.naive:
            branch4 = self.conv(self.pool_proj, 1, name="branch4_1")(branch4, train)
        return layers.concat([branch1, branch2, branch3, branch4])


class InceptionAux(nn.Module):
    """Auxiliary classifier: adaptive avg pool 4x4 -> 1x1 conv 128 -> flatten -> fc1 1024 -> ReLU ->
    dropout -> fc2 (torchvision's; the paper pools 5x5/3, the same 4x4 at 224 px but other windows).

    The flatten is NHWC (h, w, c) order; torchvision's is NCHW, so its fc1 weight columns are
    permuted on import (`torch_fixup` below).
    """

    num_classes: int
    conv: Any
    dropout_rate: float = 0.7
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        dense = functools.partial(
            nn.Dense, kernel_init=layers.dense_init, dtype=self.dtype, param_dtype=self.param_dtype
        )
        x = layers.adaptive_avg_pool(x, 4)
        x = self.conv(128, 1, name="conv")(x, train)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(dense(1024, name="fc1")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return dense(self.num_classes, name="fc2")(x)


class GoogLeNet(nn.Module):
    """GoogLeNet / Inception-v1 (torchvision `googlenet` by default).

    Takes NHWC images normalised with mean = std = 0.5 (which replaces torchvision's `transform_input`),
    at least 15x15; returns `(logits, out)`: `out["pre_logits"]`, the pooled 1024-d features before
    dropout; `out["aux_logits"]`, `(aux1, aux2)` in train mode with `aux_logits=True`, shallow head first
    (torchvision returns the deep one first), else `()` (`init` creates the heads either way); with
    `return_endpoints=True`, every named stage: `conv1`, `conv2`, `conv3`, `inception3a` ... `inception5b`.
    """

    num_classes: int = 1000
    aux_logits: bool = False  # torchvision's class default is True; the paper trains with them (0.3 each)
    dropout_rate: float = 0.2  # torchvision / slim; the paper: 0.4
    aux_dropout_rate: float = 0.7
    branch3_kernel: int = 3  # 5: the paper's true 5x5
    naive: bool = False  # True: the paper's Fig. 2a modules, no 1x1 reductions; widths grow to 4944
    norm: str = "batchnorm"  # "batchnorm" (torchvision/slim) | "lrn" (the 2014 paper: biased convs, LRN)
    width_multiplier: float = 1.0  # TF-slim's depth_multiplier (every conv width scaled, min 16; aux fc1 stays 1024)
    bn_momentum: float = 0.9  # Flax convention: PyTorch's momentum 0.1
    bn_epsilon: float = 1e-3
    remat: bool = False  # gradient checkpointing per Inception block (layers.remat_if): less memory, more compute
    kernels: str = "auto"  # CPU forms or XLA's operations (inception_jax.kernels); "auto" by platform
    padding_mode: PaddingMode = "torch"  # "tf": 'SAME' everywhere, as slim's inception_v1 checkpoint expects
    in_channels: int = 3
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @property
    def num_aux_heads(self) -> int:
        return len(_AUX_AFTER) if self.aux_logits and self.num_classes > 0 else 0

    @property
    def min_input_size(self) -> int:
        return _MIN_INPUT_SIZE

    def _check_options(self):
        if self.norm not in ("batchnorm", "lrn"):
            raise ValueError(f"googlenet: norm must be 'batchnorm' or 'lrn', got {self.norm!r}")
        if self.branch3_kernel < 1 or self.branch3_kernel % 2 == 0:
            raise ValueError(f"googlenet: branch3_kernel must be odd (3 or 5), got {self.branch3_kernel}")
        layers.check_common_options(self, "googlenet")

    @nn.compact
    @layers.kernel_scope
    def __call__(self, x, train: bool = False, return_endpoints: bool = False):
        self._check_options()
        # Checked in both padding modes: TF 'SAME' would run smaller inputs, but one floor keeps the
        # data config (registry min_input_size) true for every option.
        layers.check_input(x, model="googlenet", min_size=_MIN_INPUT_SIZE, in_channels=self.in_channels)
        lrn = self.norm == "lrn"
        conv = layers.bound_conv(self, use_bn=self.norm == "batchnorm")
        max_pool = functools.partial(layers.max_pool, ceil_mode=True, padding_mode=self.padding_mode)
        out: dict[str, Any] = {}

        def stage(module, x):
            y = module(x, train)
            if return_endpoints:
                out[module.name] = y
            return y

        x = stage(conv(64, 7, strides=2, padding=3, name="conv1"), x)
        x = max_pool(x, 3, 2)
        if lrn:
            x = layers.local_response_norm(x)
        x = stage(conv(64, 1, name="conv2"), x)
        x = stage(conv(192, 3, padding=1, name="conv3"), x)
        if lrn:
            x = layers.local_response_norm(x)
        x = max_pool(x, 3, 2)

        aux = []
        for name, widths in INCEPTION_BLOCKS.items():
            x = stage(
                layers.remat_if(Inception, self.remat)(
                    *widths,
                    conv=conv,
                    branch3_kernel=self.branch3_kernel,
                    naive=self.naive,
                    padding_mode=self.padding_mode,
                    name=name,
                ),
                x,
            )
            if name in _AUX_AFTER and self.num_aux_heads and (train or self.is_initializing()):
                head = InceptionAux(
                    self.num_classes,
                    conv,
                    self.aux_dropout_rate,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"aux{_AUX_AFTER.index(name) + 1}",
                )
                aux.append(head(x, train))
            if name in _POOL_AFTER:
                x = max_pool(x, _POOL_AFTER[name], 2)

        x = out["pre_logits"] = layers.global_avg_pool(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if self.num_classes:
            x = layers.classifier(x, self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")
        out["aux_logits"] = tuple(aux) if train else ()
        return x, out


def torchvision_fixup(state: dict) -> dict:
    """Reorders torchvision's aux fc1 input columns from NCHW flatten order to our NHWC order.

    PyTorch flattens the 128x4x4 aux features as c*16 + h*4 + w; we flatten as h*512 + w*128 + c.
    Only the columns move: the converter's generic 2-D transpose then makes the Dense kernel
    (REFERENCES.md §3.4).
    """
    state = dict(state)
    for head in ("aux1", "aux2"):
        key = f"{head}.fc1.weight"
        if key in state:
            w = state[key]
            units, flat = w.shape
            state[key] = w.reshape(units, flat // 16, 4, 4).transpose(0, 2, 3, 1).reshape(units, flat)
    return state


@register_model(
    "googlenet",
    tags=(FAMILY,),
    data=DataConfig(
        input_size=224,
        min_input_size=_MIN_INPUT_SIZE,
        crop_pct=0.875,
        interpolation="bilinear",
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
    ),
    description="GoogLeNet / Inception-v1 (torchvision googlenet, the TF-slim inception_v1 port)",
    torch_reference="torchvision googlenet",
    torch_fixup=torchvision_fixup,
)
def googlenet(**overrides) -> GoogLeNet:
    return GoogLeNet(**overrides)
