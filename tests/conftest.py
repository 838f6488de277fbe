"""Test setup: CPU only, 8 fake devices, set before jax is imported."""

import os
import socket
import subprocess
import sys

import pytest

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def two_processes():
  """run(script, *args): runs `script args... coordinator pid` as two local
  processes with 2 CPU devices each (gloo collectives are the script's to
  set up) and fails with the output tail of any that exits non-zero."""

  def run(script, *args):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    address = f"127.0.0.1:{_free_port()}"
    procs = [
      subprocess.Popen(
        [sys.executable, str(script), *map(str, args), address, str(pid)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      )
      for pid in range(2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
      assert p.returncode == 0, out[-3000:]

  return run
