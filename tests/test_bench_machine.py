"""`stepjax.bench_machine`: the machine every bench reports."""

import os

from stepjax import bench_machine

FIELDS = (
  "cpu_model",
  "cpu_flags",
  "cores",
  "logical_cpus",
  "arch",
  "jax",
  "jaxlib",
  "backend",
  "device_kind",
  "device_count",
  "load_avg_1m",
  "others_cpu_share",
  "matmul_f32_n",
  "matmul_f32_best_gflops",
  "matmul_f32_median_gflops",
)


def test_describe_has_every_field_and_a_positive_peak():
  info = bench_machine.describe(peak_n=256, peak_iters=3)
  assert set(FIELDS) <= set(info)
  assert info["cpu_model"]
  assert set(info["cpu_flags"]) <= set(bench_machine.VECTOR_FLAGS)
  assert 1 <= info["cores"] <= info["logical_cpus"]
  assert info["backend"] == "cpu" and info["device_count"] >= 1
  assert info["matmul_f32_n"] == 256
  assert info["matmul_f32_best_gflops"] >= info["matmul_f32_median_gflops"] > 0
  line = bench_machine.format_line(info)
  assert info["cpu_model"] in line and "GFLOP/s" in line


def test_busy_reads_other_processes_now_not_the_load_average():
  info = {"cores": 2, "load_avg_1m": 1.9, "others_cpu_share": 0.02}
  assert not bench_machine.is_busy(info)  # a bench that just ended
  assert bench_machine.is_busy({**info, "others_cpu_share": 0.6})
  # Without /proc/stat the load average decides, as before.
  assert bench_machine.is_busy({**info, "others_cpu_share": None})
  assert not bench_machine.is_busy(
    {"cores": 2, "load_avg_1m": 0.4, "others_cpu_share": None}
  )


def test_others_cpu_share_sees_a_busy_thread():
  import threading

  share_idle = bench_machine.others_cpu_share(0.3)
  stop = threading.Event()

  def spin():
    while not stop.is_set():
      pass

  thread = threading.Thread(target=spin)
  thread.start()
  try:
    share_busy = bench_machine.others_cpu_share(0.3)
  finally:
    stop.set()
    thread.join()
  if share_idle is None:  # no /proc/stat here
    assert share_busy is None
    return
  assert 0.0 <= share_idle <= 1.0
  # One spinning thread is one CPU of the machine's, whatever else runs.
  assert share_busy >= 0.9 / (os.cpu_count() or 1)


def test_matmul_peak_is_measured_once_per_process():
  first = bench_machine.matmul_peak(128, 2)
  assert bench_machine.matmul_peak(128, 2) is first
  assert first["best_flops_per_s"] > 0


def test_chip_peaks_by_device_kind():
  peak = bench_machine.chip_peak
  assert peak("NVIDIA H100 80GB HBM3") == 989e12
  assert peak("NVIDIA H100 PCIe") == 756e12
  assert peak("NVIDIA H200") == 989e12
  assert peak("NVIDIA A100-SXM4-80GB") == 312e12
  assert peak("NVIDIA L4") == 121e12
  assert peak("NVIDIA L40S") == 362e12
  assert peak("TPU v5 lite") == 197e12
  assert peak("TPU v5") == 459e12
  assert peak("TPU v5p") == 459e12
  assert peak("cpu") is None
