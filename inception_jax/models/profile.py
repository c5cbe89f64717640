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

from inception_jax import kernels
from inception_jax.models import registry


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
        repeats = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1  # scanned blocks
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax_core.ClosedJaxpr):
                    total += repeats * _jaxpr_macs(sub.jaxpr)
                elif isinstance(sub, jax_core.Jaxpr):
                    total += repeats * _jaxpr_macs(sub)
    return total


def count_macs(model, variables, input_size: int, *, train: bool = False) -> int:
    """Multiply-accumulates of one forward pass on a single `input_size` x `input_size` image, counted on
    XLA's operations (`kernels="xla"`: the CPU forms add products with ones; "auto" traces both forms)."""
    if "kernels" in getattr(model, "__dataclass_fields__", {}):
        model = model.clone(kernels="xla")
    x = jax.ShapeDtypeStruct((1, input_size, input_size, model.in_channels), jnp.float32)
    if train:
        fn = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
    else:
        fn = lambda v, x: model.apply(v, x, train=False)
    with kernels.use("xla"):
        closed = jax.make_jaxpr(fn)(variables, x)
    return _jaxpr_macs(closed.jaxpr)


def params_and_macs(model, input_size: int) -> tuple[int, int]:
    """(parameters, MACs of one eval forward pass on one image) of a network, without allocating."""
    variables = abstract_variables(model, input_size)
    return count_params(variables["params"]), count_macs(model, variables, input_size)


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


def summary_row(name: str) -> dict:
    """One row of `inception-models`: parameters (without / with aux), GMACs, input sizes."""
    data = registry.data_config(name)
    model = registry.create_model(name, aux_logits=False)
    variables = abstract_variables(model, data.input_size)
    row = {
        "model": name,
        "params": count_params(variables["params"]),
        "params_with_aux": None,
        "gmacs": round(count_macs(model, variables, data.input_size) / 1e9, 3),
        "input_size": data.input_size,
        "min_input_size": data.min_input_size,
    }
    with_aux = registry.create_model(name, aux_logits=True)
    if num_aux_heads(with_aux, data.input_size):
        row["params_with_aux"] = count_params(abstract_variables(with_aux, data.input_size)["params"])
    return row


def summary_table(rows: list[dict] | None = None) -> str:
    """The rows (default: every registered variant) as the text table the CLI prints."""
    if rows is None:
        rows = [summary_row(n) for n in registry.list_models()]
    header = f"{'model':<22}{'params':>14}{'params+aux':>14}{'GMACs':>9}{'input':>7}{'min':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        aux = f"{r['params_with_aux']:,}" if r["params_with_aux"] else "-"
        lines.append(
            f"{r['model']:<22}{r['params']:>14,}{aux:>14}{r['gmacs']:>9.3f}{r['input_size']:>7}{r['min_input_size']:>6}"
        )
    lines.append(
        "GMACs: conv + linear multiply-accumulates at the default input size, batch 1 "
        "(the count timm/torchvision report)."
    )
    return "\n".join(lines)
