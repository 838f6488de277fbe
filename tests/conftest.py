"""Test setup: CPU only, 8 fake devices, set before jax is imported.

One persistent XLA compilation cache per test run, shared by the xdist
workers and the subprocesses tests start: many tests build the same tiny
model and trainer afresh, so they jit the same programs; the cache hands
later ones the executable the first one compiled (the same program, only
sooner). It lives in the system's temp dir and is removed when the run
ends; tests that test the cache set their own directory.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
import xla_env

# The first process to import this file (pytest's controller, before it
# starts the xdist workers, which inherit its environment) makes the cache.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
    prefix="stepjax-xla-cache-"
  )
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("XLA_FLAGS", xla_env.flags(8))
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
    env = xla_env.env(2, JAX_PLATFORMS="cpu")
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


def pytest_unconfigure(config):
  """The process that made the run's cache removes it at the end."""
  del config
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
