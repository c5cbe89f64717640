"""Where a train step's compile time goes: tracing and lowering against XLA's compile, and the program's size.

For each variant (and with `scan_blocks` where it has repeated blocks) builds the trainer's train step
(batch 8, 299 px, float32, no aux loss, the devices' kernels), lowers it and compiles it without the
persistent cache, each in a fresh process, and prints one JSON line: seconds to trace and lower, seconds
of XLA compile, lines of StableHLO and of optimized HLO, convolutions and while loops in the latter.

    python benchmarks/compile_split.py >> benchmarks/compile_split_cpu.jsonl
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

CASES = [
    ("googlenet", False),
    ("bn_inception", False),
    ("inception_v2", False),
    ("inception_v3", False),
    ("inception_v4", False),
    ("inception_v4", True),
    ("inception_resnet_v1", False),
    ("inception_resnet_v1", True),
    ("inception_resnet_v2", False),
    ("inception_resnet_v2", True),
]
SIZE, BATCH = 299, 8


def measure(name: str, scan: bool) -> dict:
    import jax
    import jax.numpy as jnp

    from inception_jax import optim
    from inception_jax.trainer import parallel, train, validation
    from inception_jax.trainer.config import base_config

    c = base_config()
    c.model.name = name
    if scan:
        c.model.scan_blocks = True
    c.batch_size, c.total_steps, c.input.image_size = BATCH, 10, SIZE
    c.input.mean, c.input.std = (0.5,) * 3, (0.5,) * 3
    c.aux_loss_weights = ()
    c = validation.validated(c)
    mesh = parallel.make_mesh()
    model = train.build_model(c, 1000)
    tx, schedule = optim.make_optimizer(c, 10, 10)
    start = time.perf_counter()
    state = jax.eval_shape(lambda k: train.init_state(model, tx, c, SIZE, k), jax.random.key(0))
    step = train.make_train_step(model, tx, schedule, c, 1000, mesh)
    batch = {
        "image": jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((BATCH,), jnp.int32),
    }
    lowered = step.lower(state, batch, jax.random.key(1))
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    optimized = compiled.as_text()
    return {
        "model": name,
        "scan_blocks": scan,
        "trace_lower_s": round(lower_s, 2),
        "xla_compile_s": round(compile_s, 2),
        "stablehlo_lines": len(lowered.as_text().splitlines()),
        "optimized_hlo_lines": len(optimized.splitlines()),
        "convolutions": optimized.count("convolution("),
        "while_loops": optimized.count(" while("),
        "batch_size": BATCH,
        "image_size": SIZE,
        "cpu": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "versions": {"jax": jax.__version__},
    }


def main():
    if len(sys.argv) == 3:  # one case, in this (fresh) process
        print(json.dumps(measure(sys.argv[1], sys.argv[2] == "scan")), flush=True)
        return
    env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}
    env.pop("XLA_FLAGS", None)
    for name, scan in CASES:
        subprocess.run([sys.executable, __file__, name, "scan" if scan else "unrolled"], env=env, check=True)


if __name__ == "__main__":
    main()
