"""XLA compilation: JAX's persistent compilation cache, and compiling a step with a line saying how.

An Inception train step takes tens of seconds to compile on a CPU and several on a GPU, and every
restarted run, every member of a sweep and every test builds the same programs again. JAX's persistent
cache keeps compiled executables on disk keyed by the program, its shardings and the JAX version, so
the second time costs a file read. The trainer turns it on by default (`config.compilation_cache`),
in `config.compilation_cache_dir`, else `$JAX_COMPILATION_CACHE_DIR`, else `DEFAULT_CACHE_DIR`.

**Convolutions on a CPU.** XLA's CPU backend hands convolutions, matmuls, elementwise ops and
reductions to the YNNPACK library, fused into large subgraphs. YNNPACK's convolutions are the slow
part of an Inception step: their backward passes, and wide maps with few channels (the stem's
147x147x32 3x3 convolution: forward + backward 552 ms, against 171 ms from XLA's own Eigen
convolution on the same CPU; BENCHMARKS.md). `compiler_options` turns YNNPACK off, so XLA emits
convolutions through Eigen and the rest with its own code generator (`config.xla_cpu_convolutions=
"eigen"`, the default; measured whole steps are 1.2-1.7x faster, matmuls no slower). Pass
it to your own `jax.jit` (`jax.jit(f, compiler_options=compiler_options(jax.devices()))`) to get the
same convolutions in a notebook. The two compute the same function up to float rounding.
"""

from __future__ import annotations

import functools
import logging
import os
import time

import jax
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "inception_jax", "xla")
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"

CPU_CONVOLUTIONS = ("eigen", "ynnpack")
# The option lists the kinds of subgraph YNNPACK may take; empty: none. (Letting it keep elementwise
# ops and reductions is no faster, and its fusions of those then pull neighbouring convolutions in.)
_NO_YNNPACK = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _cpu_option_supported() -> bool:
    """Whether this jaxlib knows the option (it is experimental: a later XLA may rename or drop it)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=_NO_YNNPACK).lower(
            jax.ShapeDtypeStruct((), np.float32)).compile()
        return True
    except Exception as e:  # noqa: BLE001 - XLA reports an unknown option as a generic runtime error
        log.warning("XLA does not take %s (%s); CPU convolutions stay with XLA's default library",
                    next(iter(_NO_YNNPACK)), str(e).splitlines()[0])
        return False


def compiler_options(devices, convolutions: str = "eigen") -> dict[str, str] | None:
    """`jax.jit(compiler_options=...)` for a program that runs on `devices` (a Mesh, a sequence of
    devices, or one device): on a CPU, convolutions by XLA's Eigen emitter unless `convolutions` is
    "ynnpack" (XLA's own default); None (nothing changed) on other platforms. See the module docstring."""
    if convolutions not in CPU_CONVOLUTIONS:
        raise ValueError(f"convolutions={convolutions!r}; expected one of {CPU_CONVOLUTIONS}")
    first = next(iter(np.ravel(getattr(devices, "devices", devices))))
    if first.platform != "cpu" or convolutions == "ynnpack" or not _cpu_option_supported():
        return None
    return dict(_NO_YNNPACK)


def configure_cache(enabled: bool, directory: str | None = None) -> str | None:
    """Turns the persistent cache on in `directory` (see the module docstring) or off; returns its path.

    Call before the first compile of the process: JAX opens the cache on first use.
    """
    jax.config.update("jax_enable_compilation_cache", bool(enabled))
    if not enabled:
        return None
    directory = directory or jax.config.jax_compilation_cache_dir or DEFAULT_CACHE_DIR
    directory = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(directory, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != directory:
        jax.config.update("jax_compilation_cache_dir", directory)
    return directory


def compile_timed(jitted, *args):
    """`jitted.lower(*args).compile()`; returns (compiled, seconds, whether it was read from the cache)."""
    hits = []

    def listener(event: str, **_):
        if event == _CACHE_HIT_EVENT:
            hits.append(event)

    jax.monitoring.register_event_listener(listener)
    start = time.perf_counter()
    try:
        compiled = jitted.lower(*args).compile()
    finally:
        jax.monitoring.unregister_event_listener(listener)
    return compiled, time.perf_counter() - start, bool(hits)


def compile_step(name: str, jitted, *args, announce=print):
    """`compile_timed`, announcing whether XLA compiled the step or read it from the cache and how long
    that took. `args` may be arrays or `jax.ShapeDtypeStruct`s with shardings."""
    compiled, seconds, hit = compile_timed(jitted, *args)
    how = "read from the compilation cache" if hit else "compiled"
    if announce is not None:
        announce(f"{name}: {how} in {seconds:.1f} s")
    return compiled
