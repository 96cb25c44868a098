"""Test-wide settings.

Eight host CPU devices, so sharding and collective tests run on a CPU-only machine (this must happen
before jax is imported), and fp32 matmuls at full precision so parity tolerances mean what they say.
XLA's backend optimisation is turned down: the test models are tiny, so compile time dominates.
"""

import os

TEST_XLA_FLAGS = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS).strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
