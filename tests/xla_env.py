"""XLA flags for the suite and the subprocesses its tests start.

The tests run tiny models, so their time goes to compiling, not running:
LLVM's backend at -O0 without its expensive passes compiles the same HLO
programs (XLA's own optimisations, fusion included, are unchanged) in
about two thirds of the CPU time. Every test process gets these flags: the
suite's own (conftest.py) and the `stepjax` commands tests start.
"""

import os

FAST_COMPILE = (
  "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)


def flags(devices: int) -> str:
  """XLA_FLAGS for `devices` fake CPU devices, compiled fast."""
  return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"


def env(devices: int, **extra: str) -> dict[str, str]:
  """This process's environment for a subprocess with `devices` devices."""
  return {**os.environ, "XLA_FLAGS": flags(devices), **extra}
