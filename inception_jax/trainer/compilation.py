"""XLA compilation: JAX's persistent compilation cache, and compiling a step with a line saying how.

An Inception train step takes tens of seconds to compile on a CPU and several on a GPU, and every
restarted run, every member of a sweep and every test builds the same programs again. JAX's persistent
cache keeps compiled executables on disk keyed by the program, its shardings and the JAX version, so
the second time costs a file read. The trainer turns it on by default (`config.compilation_cache`),
in `config.compilation_cache_dir`, else `$JAX_COMPILATION_CACHE_DIR`, else `DEFAULT_CACHE_DIR`.
"""

from __future__ import annotations

import os
import time

import jax

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "inception_jax", "xla")
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


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
