"""Cheap ways to run a full-size model in tests on the 2-core CPU.

* `fake_variables`: He-scaled random kernels, zero biases and identity BatchNorm, filled in from the
  abstract shapes. Compiling `model.init`'s truncated-normal initialiser for every kernel shape costs
  about a minute per network here; the family tests run the real `init` once each.
* `jit_apply`: `model.apply` under `jax.jit`. Eager (op-by-op) dispatch compiles every primitive on
  its own and is about 8x slower for a whole Inception network (9 s against 1.1 s for GoogLeNet at
  97 px). A jitted function returns its dicts sorted, so the endpoints' network order, which several
  tests check, is recorded while tracing and restored. It compiles with the trainer's CPU options
  (`kernels.compiler_options`), so the parity tests check the convolutions training runs.
"""

from __future__ import annotations

import jax
import numpy as np

from inception_jax import kernels
from inception_jax.models import profile


def fake_variables(model, size: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))).astype(np.float32)
        return np.ones(leaf.shape, np.float32) if name in ("scale", "var") else np.zeros(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(fill, profile.abstract_variables(model, size))


def jit_apply(model, variables, x, *, rngs=None, **kwargs):
    """`model.apply(variables, x, rngs=rngs, **kwargs)`, compiled (`rngs` as an argument, so calls that
    differ only in their keys share one compile); `out` keeps the model's key order."""
    order: list[str] = []
    mutable = kwargs.get("mutable")

    def forward(v, x, rngs):
        result = model.apply(v, x, rngs=rngs, **kwargs)
        order.extend((result[0] if mutable else result)[1])
        return result

    result = jax.jit(forward, compiler_options=kernels.compiler_options(jax.devices()))(variables, x, rngs)
    (logits, out), state = result if mutable else (result, None)
    out = {k: out[k] for k in order}
    return ((logits, out), state) if mutable else (logits, out)


def load_config(name: str, arg: str | None = None):
    """`configs/<name>.py`'s `get_config(arg)`, as `--config=configs/<name>.py:arg` loads it."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
