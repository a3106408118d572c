"""Test-session set-up: 8 virtual CPU devices for sharding tests, CPU-only JAX, one persistent compilation cache per
session; the shared fixtures are musicflow_jax/testing/fixtures.py's. Tests are laid out like the package
(tests/unit/<area>/) plus end-to-end runs (tests/e2e/)."""

import os

# LLVM at -O0 for the tests' programs (MUSICFLOW_TEST_XLA_FLAGS="" restores XLA's default). 65 % of the suite's
# in-process time is compilation (jax.monitoring, one full run: 2352 of 3593 s), and -O0 compiles ~35 % faster; the
# few runtime-bound tests run slower, a net gain (-O1, whose programs run as fast as -O2's, compiles 52 % slower than
# -O0: one full run each, 17 min 22 s vs 16 min 18 s). The bundled model's generations (2.8x slower at -O0) run in a
# child at the default level (tests/e2e/test_bundled.py). XLA's new CPU fusion emitters off: the tiny stage-1 train step
# compiles in 4.1 s instead of 5.3 s (3 runs each, same loss to the last digit), its steps run as fast.
DEFAULT_TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
TEST_XLA_FLAGS = tuple(f for f in os.environ.get("MUSICFLOW_TEST_XLA_FLAGS", DEFAULT_TEST_XLA_FLAGS).split() if f)
os.environ["MUSICFLOW_TEST_XLA_FLAGS"] = " ".join(TEST_XLA_FLAGS)  # what testing/child.py's children leave out

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# Subprocesses the tests start inherit these flags.
for flag in TEST_XLA_FLAGS:
    if flag.split("=")[0] not in os.environ["XLA_FLAGS"]:
        os.environ["XLA_FLAGS"] += " " + flag

# One persistent XLA compilation cache per test session (fresh in CI: nothing carried between runs), shared by the
# xdist workers and the subprocesses tests start: the same tiny train/generate steps compile once per session.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="musicflow_jax_test_xla_")
    os.environ["MUSICFLOW_JAX_TEST_CACHE_OWNER"] = str(os.getpid())

# Every compilation is written to that cache, however short (JAX writes only those over 1 s by default): the small
# programs that each test module and each CLI child compile again are read back instead (the inference, app and
# evaluate-model test files on 2 workers: 125 -> 100 s, one run each).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

pytest_plugins = ["musicflow_jax.testing.fixtures"]


def pytest_unconfigure(config):
    """The process that created the session's compilation cache removes it at the end."""
    if os.environ.get("MUSICFLOW_JAX_TEST_CACHE_OWNER") == str(os.getpid()):
        import shutil

        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The longest files first, so that per-file scheduling (run_tests.sh: --dist loadfile --no-loadscope-reorder)
    ends both workers together: end-to-end files, then files with slow tests, then the rest, each group in collection
    order (xdist's default order, most tests first, put the few-test, minute-long end-to-end files last)."""
    def path(item) -> str:
        return item.nodeid.split("::")[0]

    slow_files = {path(i) for i in items if i.get_closest_marker("slow")}
    items.sort(key=lambda i: (not path(i).startswith("tests/e2e/"), path(i) not in slow_files))
