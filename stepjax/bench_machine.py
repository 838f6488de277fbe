"""The machine a benchmark ran on, printed above and stored with its figures.

A speed ratio means little without the machine: XLA and oneDNN pick other
kernels on AVX2, AVX-512 or AMX CPUs, and a 2-core VM is not a 32-core
workstation. `describe()` gathers what decides a figure (CPU model and
vector extensions, the cores this process may run on, jax/jaxlib versions,
the backend and its device kind, the 1-minute load and the CPU share other
processes use when the bench starts, `is_busy`) plus one
measured number: the peak of a jitted float32 matmul, a short, warmed-up,
best-of-N run (`matmul_peak`). `stepjax bench ...` prints `format_line` at
the top and stores `describe()` under "machine" in every --out JSON.

`CHIP_PEAKS` holds the dense bf16 peak FLOP/s of accelerators by
`device_kind`, for MFU (`chip_peak`).
"""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Vector / matrix extensions that decide the CPU's matmul kernels, in the
# spelling of /proc/cpuinfo's flags (x86) or Features (Arm).
VECTOR_FLAGS = (
  "sse4_2",
  "avx",
  "avx2",
  "fma",
  "f16c",
  "avx_vnni",
  "avx512f",
  "avx512bw",
  "avx512vl",
  "avx512_vnni",
  "avx512_bf16",
  "avx512_fp16",
  "amx_tile",
  "amx_bf16",
  "amx_int8",
  "asimd",
  "asimdhp",
  "bf16",
  "i8mm",
  "sve",
  "sve2",
)

# Dense (no sparsity) bf16 peak FLOP/s per chip, from the vendors' data
# sheets, matched against `device_kind` in order (first substring match,
# case-insensitive), so the PCIe / NVL parts and the L40(S) come before the
# names they contain.
CHIP_PEAKS = (
  ("H100 PCIe", 756e12),
  ("H100 NVL", 835e12),
  ("H100", 989e12),
  ("H200 NVL", 835e12),
  ("H200", 989e12),
  ("A100", 312e12),
  ("L40S", 362e12),
  ("L40", 181e12),
  ("L4", 121e12),
  ("TPU v5 lite", 197e12),  # v5e
  ("TPU v5e", 197e12),
  ("TPU v5p", 459e12),
  ("TPU v5", 459e12),  # v5p reports "TPU v5"
  ("TPU v4", 275e12),
  ("TPU v6 lite", 918e12),  # v6e (Trillium)
)


def chip_peak(device_kind: str) -> float | None:
  """Dense bf16 peak FLOP/s of a chip by its `device_kind`, or None."""
  kind = device_kind.lower()
  for name, peak in CHIP_PEAKS:
    if name.lower() in kind:
      return peak
  return None


def cpu_cores() -> int:
  """CPU cores this process may run on (its affinity mask)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def _cpuinfo() -> tuple[str, list[str]]:
  """(CPU model, its vector extensions among VECTOR_FLAGS)."""
  model, flags = "", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and not model:
          model = value.strip()
        elif key in ("flags", "Features") and not flags:
          flags = set(value.split())
  except OSError:  # not Linux
    if sys.platform == "darwin":
      model = _sysctl("machdep.cpu.brand_string")
      flags = set(_sysctl("machdep.cpu.features").lower().split())
      flags |= set(_sysctl("machdep.cpu.leaf7_features").lower().split())
  model = model or platform.processor() or platform.machine()
  return model, [f for f in VECTOR_FLAGS if f in flags]


def _sysctl(name: str) -> str:
  try:
    out = subprocess.run(
      ["sysctl", "-n", name], capture_output=True, text=True, timeout=5
    )
  except (OSError, subprocess.SubprocessError):
    return ""
  return out.stdout.strip()


def _load() -> float | None:
  try:
    return float(os.getloadavg()[0])
  except (AttributeError, OSError):
    return None


def _cpu_times() -> tuple[int, int] | None:
  """(busy, total) jiffies of all CPUs from /proc/stat; None without it."""
  try:
    with open("/proc/stat", encoding="ascii") as f:
      fields = [int(x) for x in f.readline().split()[1:9]]
  except (OSError, ValueError):
    return None
  if len(fields) < 5:
    return None
  idle = fields[3] + fields[4]  # idle + iowait
  return sum(fields) - idle, sum(fields)


def others_cpu_share(seconds: float = 0.5) -> float | None:
  """Share of all CPUs busy while this process sleeps for `seconds`: what
  other processes use right now (unlike the 1-minute load average, not
  raised by a bench that just ended). None where /proc/stat is missing."""
  before = _cpu_times()
  time.sleep(seconds)
  after = _cpu_times()
  if before is None or after is None or after[1] <= before[1]:
    return None
  return (after[0] - before[0]) / (after[1] - before[1])


def is_busy(info: dict[str, Any]) -> bool:
  """Whether other work shared the machine when the bench started: other
  processes used over a quarter of the CPUs (`others_cpu_share`), or,
  where that is unknown, the 1-minute load exceeded half the cores."""
  share = info.get("others_cpu_share")
  if share is not None:
    return share > 0.25
  load = info.get("load_avg_1m")
  return load is not None and load > 0.5 * info["cores"]


def matmul_peak(
  n: int | None = None, iters: int = 10, dtype: str = "float32"
) -> dict[str, float]:
  """FLOP/s of a jitted n x n x n matmul: best and median of `iters` runs.

  Warmed up (compile + 4 runs) first. n defaults to 2048 on CPU and 8192 on
  accelerators (a 2048 matmul there is too short to time). On a shared
  host the best run is the closer estimate of the peak. Cached per process:
  every bench in one process reports the same measurement.
  """
  if n is None:
    n = 2048 if jax.default_backend() == "cpu" else 8192
  return _matmul_peak(int(n), int(iters), str(dtype))


@functools.cache
def _matmul_peak(n: int, iters: int, dtype: str) -> dict[str, float]:
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (n, n), dtype)
  b = jax.random.normal(keys[1], (n, n), dtype)
  mm = jax.jit(jnp.matmul)
  for _ in range(4):
    jax.block_until_ready(mm(a, b))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(mm(a, b))
    times.append(time.perf_counter() - t0)
  flop = 2.0 * n**3
  return {
    "n": float(n),
    "iters": float(iters),
    "best_flops_per_s": flop / min(times),
    "median_flops_per_s": flop / float(np.median(times)),
  }


def describe(peak_n: int | None = None, peak_iters: int = 10) -> dict[str, Any]:
  """The machine: CPU, cores, jax, device, load and the f32 matmul peak."""
  import jaxlib

  model, flags = _cpuinfo()
  device = jax.devices()[0]
  load = _load()  # before the matmul, which raises it
  others = others_cpu_share()
  peak = matmul_peak(peak_n, peak_iters)
  return {
    "cpu_model": model,
    "cpu_flags": flags,
    "cores": cpu_cores(),
    "logical_cpus": os.cpu_count() or 1,
    "arch": platform.machine(),
    "os": platform.platform(terse=True),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "backend": jax.default_backend(),
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
    "chip_peak_bf16_flops_per_s": chip_peak(device.device_kind),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "load_avg_1m": load,
    "others_cpu_share": others,
    "matmul_f32_n": peak["n"],
    "matmul_f32_best_gflops": peak["best_flops_per_s"] / 1e9,
    "matmul_f32_median_gflops": peak["median_flops_per_s"] / 1e9,
  }


def format_line(info: dict[str, Any]) -> str:
  """Two lines for the top of a bench's output."""
  flags = " ".join(info["cpu_flags"]) or "none of the known vector flags"
  load = info["load_avg_1m"]
  busy = " (busy: timings are not representative)" if is_busy(info) else ""
  load_text = "n/a" if load is None else f"{load:.2f}"
  others = info.get("others_cpu_share")
  if others is not None:
    load_text += f", other processes {100 * others:.0f}% of the CPUs"
  n = int(info["matmul_f32_n"])
  return (
    f"machine: {info['cpu_model']}, {info['cores']} cores "
    f"({info['logical_cpus']} logical), {flags}; load {load_text}{busy}\n"
    f"jax {info['jax']} / jaxlib {info['jaxlib']}, {info['backend']} "
    f"({_kind(info)} x{info['device_count']}); f32 matmul {n}^3 best "
    f"{info['matmul_f32_best_gflops']:.1f} GFLOP/s (median "
    f"{info['matmul_f32_median_gflops']:.1f})"
  )


def _kind(info: dict[str, Any]) -> str:
  return re.sub(r"\s+", " ", str(info["device_kind"])).strip()
