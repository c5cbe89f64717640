"""Parameter and multiply-accumulate counts, the numbers the model report and tests compare.

MACs are counted analytically from the traced program: every `conv_general_dilated` and `dot_general`
contributes output elements x contraction length. That is what `torch.utils.flop_counter` / timm's
`infer_gmacs` count (conv and linear only; BN, pooling and activations are excluded), so our numbers
compare directly with REFERENCES.md §1's. XLA's `cost_analysis` also counts elementwise work and differs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core


def count_params(params) -> int:
    """Number of trainable parameters (the `params` collection; BN running stats are not parameters)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _eqn_macs(eqn) -> int:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        lhs, rhs = (v.aval for v in eqn.invars[:2])
        (out,) = (v.aval for v in eqn.outvars)
        dn = eqn.params["dimension_numbers"]
        rhs_spec = dn.rhs_spec  # (out_feature_dim, in_feature_dim, *spatial)
        in_per_group = rhs.shape[rhs_spec[1]]
        window = math.prod(rhs.shape[d] for d in rhs_spec[2:])
        return int(math.prod(out.shape) * in_per_group * window)
    if name == "dot_general":
        lhs = eqn.invars[0].aval
        (out,) = (v.aval for v in eqn.outvars)
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        return int(math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract))
    return 0


def _jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax_core.ClosedJaxpr):
                    total += _jaxpr_macs(sub.jaxpr)
                elif isinstance(sub, jax_core.Jaxpr):
                    total += _jaxpr_macs(sub)
    return total


def count_macs(model, variables, input_size: int, *, train: bool = False) -> int:
    """Multiply-accumulates of one forward pass on a single `input_size` x `input_size` image."""
    x = jax.ShapeDtypeStruct((1, input_size, input_size, model.in_channels), jnp.float32)
    if train:
        fn = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": jax.random.key(0)})
    else:
        fn = lambda v, x: model.apply(v, x, train=False)
    closed = jax.make_jaxpr(fn)(variables, x)
    return _jaxpr_macs(closed.jaxpr)


def abstract_variables(model, input_size: int):
    """Variable shapes without allocating or computing anything (`jax.eval_shape` of `init`)."""
    x = jax.ShapeDtypeStruct((1, input_size, input_size, model.in_channels), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)


def num_aux_heads(model, input_size: int) -> int:
    """How many aux logits the model returns in train mode (0 when it has none or they are off)."""
    variables = abstract_variables(model, input_size)
    x = jax.ShapeDtypeStruct((1, input_size, input_size, model.in_channels), jnp.float32)

    def forward(v, x):
        (_, out), _ = model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return out["aux_logits"]

    return len(jax.eval_shape(forward, variables, x))
