import os
import tempfile

# Eight fake CPU devices for the data-parallel tests; set before JAX initialises its backend.
# XLA's CPU compiles dominate this suite (an Inception train step takes 1-2 minutes at the default
# LLVM level); level 0 compiles about a third faster and computes the same operations.
TEST_XLA_OPT = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_OPT}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Many tests build the same programs (every `train_and_evaluate` call re-traces its steps); JAX's
# persistent compilation cache, shared by the xdist workers and the subprocess runs, compiles each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "inception_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# Importing torchvision or timm after TensorFlow segfaults (triton's native module, imported by
# torch._dynamo, crashes once TensorFlow is loaded; TF 2.21, torch 2.14); the other order is fine.
# Collection order alone used to decide it, so `pytest tests/test_data.py tests/test_bench.py` crashed.
try:
    import torchvision  # noqa: F401
except ImportError:  # the references are a test extra; without them their tests skip
    pass


def pytest_collection_modifyitems(config, items):
    """Long end-to-end tests (`@pytest.mark.slow`) first. xdist's `worksteal` mode (scripts/test.sh)
    hands each worker a contiguous half of this order and lets an idle worker take over part of the
    other's queue, so the short tests at the end even out the finish. (`load` mode sent every slow test
    to one worker, which ran 200 s after the other went idle.)"""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
