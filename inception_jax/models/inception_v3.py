"""Inception-v3 and the Rethinking paper's Inception-v2 (Szegedy et al., arXiv:1512.00567).

`inception_v3` is timm's / torchvision's `inception_v3` layer for layer, with their module names, so
their weights load by name (`tools.convert.from_torch`); its pools, padding and BatchNorm follow them
(REFERENCES.md §3.1, §3.2). The paper's ablations are module switches placed on that released graph,
and `inception_v2` is our reading of Table 3's "Inception-v2" row (REFERENCES.md §3.7).
`fid_inception_v3` is the 2015-12-05 graph FID is defined with (REFERENCES.md §8).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax.numpy as jnp

from inception_jax.models import layers
from inception_jax.models.layers import Dtype, PaddingMode
from inception_jax.models.registry import FAMILY, DataConfig, register_model

MIN_INPUT_SIZE = 75  # below it Mixed_7a has no output (REFERENCES.md §3.5); 74 fails in timm too
AUX_MIN_GRID = 17  # Mixed_6e side where the reference aux head's 5x5/3 pool yields the 5x5 conv1 needs

ModuleDef = Callable[..., nn.Module]
InceptionA5x5 = Literal["5x5", "3x3", "3x3x2"]


class InceptionA(nn.Module):
    """35x35 module (Mixed_5b-5d): 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1."""

    pool_features: int
    conv: ModuleDef
    count_include_pad: bool = True
    padding_mode: PaddingMode = "torch"
    branch5x5: InceptionA5x5 = "5x5"

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = self.conv
        b1 = conv(64, 1, name="branch1x1")(x, train)

        b5 = conv(48, 1, name="branch5x5_1")(x, train)
        if self.branch5x5 == "5x5":
            b5 = conv(64, 5, padding=2, name="branch5x5_2")(b5, train)
        elif self.branch5x5 == "3x3":
            b5 = conv(64, 3, padding=1, name="branch5x5_2")(b5, train)
        elif self.branch5x5 == "3x3x2":
            b5 = conv(64, 3, padding=1, name="branch5x5_2")(b5, train)
            b5 = conv(64, 3, padding=1, name="branch5x5_3")(b5, train)
        else:
            raise ValueError(f"inception_a_5x5 must be '5x5', '3x3' or '3x3x2', got {self.branch5x5!r}")

        b3 = conv(64, 1, name="branch3x3dbl_1")(x, train)
        b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3, train)
        b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3, train)

        bp = layers.avg_pool(x, 3, 1, 1, count_include_pad=self.count_include_pad, padding_mode=self.padding_mode)
        bp = conv(self.pool_features, 1, name="branch_pool")(bp, train)
        return layers.concat([b1, b5, b3, bp])


class InceptionB(nn.Module):
    """35 -> 17 grid reduction (Mixed_6a, Figure 10): 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max pool 3x3/2."""

    conv: ModuleDef
    padding_mode: PaddingMode = "torch"

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = self.conv
        b3 = conv(384, 3, strides=2, name="branch3x3")(x, train)

        bd = conv(64, 1, name="branch3x3dbl_1")(x, train)
        bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd, train)
        bd = conv(96, 3, strides=2, name="branch3x3dbl_3")(bd, train)

        bp = layers.max_pool(x, 3, 2, padding_mode=self.padding_mode)
        return layers.concat([b3, bd, bp])


class InceptionC(nn.Module):
    """17x17 module with factorised 7x7s (Mixed_6b-6e, Figure 6); `factorize_nxn=False` unfactorises."""

    channels_7x7: int
    conv: ModuleDef
    count_include_pad: bool = True
    padding_mode: PaddingMode = "torch"
    factorize_nxn: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, c7 = self.conv, self.channels_7x7
        b1 = conv(192, 1, name="branch1x1")(x, train)

        b7 = conv(c7, 1, name="branch7x7_1")(x, train)
        bd = conv(c7, 1, name="branch7x7dbl_1")(x, train)
        if self.factorize_nxn:
            b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7, train)
            b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7, train)
            bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd, train)
            bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd, train)
            bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd, train)
            bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd, train)
        else:
            b7 = conv(192, 7, padding=3, name="branch7x7_2")(b7, train)
            bd = conv(c7, 7, padding=3, name="branch7x7dbl_2")(bd, train)
            bd = conv(192, 7, padding=3, name="branch7x7dbl_3")(bd, train)

        bp = layers.avg_pool(x, 3, 1, 1, count_include_pad=self.count_include_pad, padding_mode=self.padding_mode)
        bp = conv(192, 1, name="branch_pool")(bp, train)
        return layers.concat([b1, b7, bd, bp])


class InceptionD(nn.Module):
    """17 -> 8 grid reduction (Mixed_7a): 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max pool 3x3/2."""

    conv: ModuleDef
    padding_mode: PaddingMode = "torch"

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = self.conv
        b3 = conv(192, 1, name="branch3x3_1")(x, train)
        b3 = conv(320, 3, strides=2, name="branch3x3_2")(b3, train)

        b7 = conv(192, 1, name="branch7x7x3_1")(x, train)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7, train)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7, train)
        b7 = conv(192, 3, strides=2, name="branch7x7x3_4")(b7, train)

        bp = layers.max_pool(x, 3, 2, padding_mode=self.padding_mode)
        return layers.concat([b3, b7, bp])


class InceptionE(nn.Module):
    """8x8 module with expanded filter banks (Mixed_7b, 7c; Figure 7): parallel 1x3 and 3x1 outputs.

    `pool="max"` is the 2015-12-05 FID graph's Mixed_7c (pytorch-fid's `FIDInceptionE_2`)."""

    conv: ModuleDef
    count_include_pad: bool = True
    padding_mode: PaddingMode = "torch"
    pool: Literal["avg", "max"] = "avg"

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = self.conv
        b1 = conv(320, 1, name="branch1x1")(x, train)

        b3 = conv(384, 1, name="branch3x3_1")(x, train)
        b3 = layers.concat(
            [
                conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3, train),
                conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3, train),
            ]
        )

        bd = conv(448, 1, name="branch3x3dbl_1")(x, train)
        bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd, train)
        bd = layers.concat(
            [
                conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd, train),
                conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd, train),
            ]
        )

        if self.pool == "max":
            bp = layers.max_pool(x, 3, 1, 1, padding_mode=self.padding_mode)
        else:
            bp = layers.avg_pool(x, 3, 1, 1, count_include_pad=self.count_include_pad, padding_mode=self.padding_mode)
        bp = conv(192, 1, name="branch_pool")(bp, train)
        return layers.concat([b1, b3, bd, bp])


class InceptionAux(nn.Module):
    """Aux classifier on Mixed_6e (Figure 8): avg pool 5x5/3 -> 1x1 128 -> 5x5 768 -> global pool -> fc.

    `bn_aux=False` drops BN from `conv1` (the head's fully connected hidden layer) and gives it a bias;
    `conv0` keeps its BN (REFERENCES.md §3.7). The reference needs Mixed_6e at least 17x17 (input >= 299);
    below that we pool adaptively to 5x5 (PyTorch's bins), so the head keeps its parameters and trains.
    """

    num_classes: int
    conv: ModuleDef
    bn_aux: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if min(x.shape[1], x.shape[2]) >= AUX_MIN_GRID:
            x = layers.avg_pool(x, 5, 3, 0, count_include_pad=True)  # unpadded: the flag has no effect
        else:  # the reference fails here; keep the head usable on small inputs
            x = layers.adaptive_avg_pool(x, 5)
        x = self.conv(128, 1, name="conv0")(x, train)
        x = self.conv(768, 5, use_bn=self.bn_aux, name="conv1")(x, train)
        x = layers.global_avg_pool(x)
        return layers.classifier(x, self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")


class InceptionV3(nn.Module):
    """Inception-v3 as timm/torchvision build it, with the Rethinking paper's design switches.

    Takes NHWC images normalised with mean = std = 0.5, at least 75x75; returns `(logits, out)`:
    `out["pre_logits"]`, the pooled 2048-d features before dropout (the logits when `num_classes=0`);
    `out["aux_logits"]`, `(aux,)` in train mode with `aux_logits=True`, else `()` (torchvision's
    behaviour; `init` creates the head either way); with `return_endpoints=True`, every named stage in
    network order, `Conv2d_1a_3x3` ... `Conv2d_4a_3x3`, `Mixed_5b` ... `Mixed_7c`.
    """

    num_classes: int = 1000
    aux_logits: bool = False  # timm's default; torchvision's is True (the paper trains with it)
    dropout_rate: float = 0.5  # torchvision's; timm's default drop_rate is 0
    avg_pool_count_include_pad: bool = True  # False: TF/Keras/slim average pools
    # The paper's switches, read on the released graph (REFERENCES.md §3.7):
    factorize_7x7: bool = True  # False: one unpadded 7x7/2 conv, `Conv2d_1a_7x7`, for the stem's three 3x3s
    bn_aux: bool = True  # False: the aux head's `conv1` (its fully connected layer) without BN
    factorize_nxn: bool = True  # False: Mixed_6b-6e's 1x7/7x1 pairs as 7x7 convs (names of each pair's first)
    inception_a_5x5: InceptionA5x5 = "5x5"  # Mixed_5b-5d's 5x5 branch: "3x3" (Figure 5) or "3x3x2"
    mixed_7c_pool: Literal["avg", "max"] = "avg"  # "max": the FID graph (fid_inception_v3)
    width_multiplier: float = 1.0  # TF-slim's depth_multiplier (min depth 16)
    bn_momentum: float = 0.9  # Flax convention: PyTorch's momentum 0.1
    bn_epsilon: float = 1e-3
    bn_use_scale: bool = True  # False: BatchNorm without gamma, as Keras and TF-slim build it
    remat: bool = False  # gradient checkpointing per Inception block (layers.remat_if): less memory, more compute
    kernels: str = "auto"  # CPU forms or XLA's operations (inception_jax.kernels); "auto" by platform
    padding_mode: PaddingMode = "torch"  # same numbers here: every padded op is stride 1, odd kernel
    in_channels: int = 3
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @property
    def num_aux_heads(self) -> int:
        return 1 if self.aux_logits and self.num_classes > 0 else 0

    @property
    def min_input_size(self) -> int:
        return MIN_INPUT_SIZE

    def _check_options(self, model: str):
        if self.inception_a_5x5 not in ("5x5", "3x3", "3x3x2"):
            raise ValueError(f"{model}: inception_a_5x5 must be '5x5', '3x3' or '3x3x2', got {self.inception_a_5x5!r}")
        if self.mixed_7c_pool not in ("avg", "max"):
            raise ValueError(f"{model}: mixed_7c_pool must be 'avg' or 'max', got {self.mixed_7c_pool!r}")
        layers.check_common_options(self, model)

    @nn.compact
    @layers.kernel_scope
    def __call__(self, x, train: bool = False, return_endpoints: bool = False):
        model = "inception_v2" if isinstance(self, InceptionV2) else "inception_v3"
        self._check_options(model)
        layers.check_input(x, model=model, min_size=MIN_INPUT_SIZE, in_channels=self.in_channels)
        conv, pm = layers.bound_conv(self), self.padding_mode
        pools = dict(count_include_pad=self.avg_pool_count_include_pad, padding_mode=pm)
        out: dict[str, Any] = {}

        def stage(module, x):
            y = module(x, train)
            if return_endpoints:
                out[module.name] = y
            return y

        if self.factorize_7x7:
            x = stage(conv(32, 3, strides=2, name="Conv2d_1a_3x3"), x)
            x = stage(conv(32, 3, name="Conv2d_2a_3x3"), x)
            x = stage(conv(64, 3, padding=1, name="Conv2d_2b_3x3"), x)
        else:
            x = stage(conv(64, 7, strides=2, name="Conv2d_1a_7x7"), x)
        x = layers.max_pool(x, 3, 2, padding_mode=pm)
        x = stage(conv(80, 1, name="Conv2d_3b_1x1"), x)
        x = stage(conv(192, 3, name="Conv2d_4a_3x3"), x)
        x = layers.max_pool(x, 3, 2, padding_mode=pm)

        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = stage(
                layers.remat_if(InceptionA, self.remat)(
                    pool_features, conv, branch5x5=self.inception_a_5x5, name=name, **pools
                ),
                x,
            )
        x = stage(layers.remat_if(InceptionB, self.remat)(conv, padding_mode=pm, name="Mixed_6a"), x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = stage(
                layers.remat_if(InceptionC, self.remat)(c7, conv, factorize_nxn=self.factorize_nxn, name=name, **pools),
                x,
            )

        aux = ()
        if self.num_aux_heads and (train or self.is_initializing()):
            head = InceptionAux(
                self.num_classes,
                conv,
                bn_aux=self.bn_aux,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="AuxLogits",
            )(x, train)
            aux = (head,) if train else ()

        block_e = layers.remat_if(InceptionE, self.remat)
        x = stage(layers.remat_if(InceptionD, self.remat)(conv, padding_mode=pm, name="Mixed_7a"), x)
        x = stage(block_e(conv, name="Mixed_7b", **pools), x)
        x = stage(block_e(conv, name="Mixed_7c", pool=self.mixed_7c_pool, **pools), x)

        x = out["pre_logits"] = layers.global_avg_pool(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if self.num_classes:
            x = layers.classifier(x, self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")
        out["aux_logits"] = aux
        return x, out


class InceptionV2(InceptionV3):
    """The Rethinking paper's Inception-v2 (Table 3): Inception-v3 before "Factorized 7x7" and
    "BN-auxiliary", an interpretation (REFERENCES.md §3.7)."""

    factorize_7x7: bool = False
    bn_aux: bool = False


@register_model(
    "inception_v3",
    tags=(FAMILY,),
    data=DataConfig(),
    description="Inception-v3 (Rethinking, 2015), timm/torchvision layout; 23.8M params (27.2M with aux)",
    torch_reference="timm inception_v3 (= torchvision inception_v3)",
)
def inception_v3(**overrides) -> InceptionV3:
    return InceptionV3(**overrides)


@register_model(
    "inception_v2",
    tags=(FAMILY,),
    data=DataConfig(),
    description="Rethinking's intermediate Inception-v2: v3 with an unfactorised 7x7 stem and no BN-auxiliary",
)
def inception_v2(**overrides) -> InceptionV2:
    return InceptionV2(**overrides)


@register_model(
    "fid_inception_v3",
    # pytorch-fid resizes every image to 299x299 bilinearly (no crop) and scales [0, 1] to [-1, 1].
    data=DataConfig(crop_pct=1.0, interpolation="bilinear", num_classes=1008),
    description="the 2015-12-05 TF Inception graph used for FID (pytorch-fid's FIDInception*), 1008 classes",
    torch_reference="pytorch-fid fid_inception_v3 (pt_inception-2015-12-05)",
)
def fid_inception_v3(**overrides) -> InceptionV3:
    """The FID network: Inception-v3 whose average pools exclude padding and whose Mixed_7c pool branch
    is a max pool, with the graph's 1008-way classifier (REFERENCES.md §8). FID uses `pre_logits`."""
    options = dict(num_classes=1008, avg_pool_count_include_pad=False, mixed_7c_pool="max", dropout_rate=0.0)
    return InceptionV3(**{**options, **overrides})
