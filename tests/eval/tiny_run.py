"""A tiny SynthMed run trained once per pytest session (not a test module).

Test modules load this file by path and call `run_dir(tmp_path_factory)`:
the run lives under the session's base temp dir, so every module of the
session reuses one training (~30 s) and one HF export.
"""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]


def _trainer_utils():
  spec = importlib.util.spec_from_file_location(
    "trainer_utils", REPO / "tests" / "train" / "trainer_utils.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def config(**overrides):
  """configs/synthmed_tiny.py:test on one device, 4 eval records."""
  values = {"mesh.data": 1, "data.num_eval": 4}
  values.update(overrides)
  return _trainer_utils().test_config(**values)


def run_dir(tmp_path_factory) -> str:
  """Trains the tiny run once per session; returns its workdir."""
  from stepjax import jobs

  path = tmp_path_factory.getbasetemp() / "tiny_run"
  if not (path / "DONE").exists():
    jobs.train(config(), str(path))
    (path / "DONE").write_text("ok\n")
  return str(path)


def hf_dir(tmp_path_factory) -> str:
  """The tiny run exported with `stepjax export` (once per session)."""
  from stepjax.eval import export

  run = run_dir(tmp_path_factory)
  path = tmp_path_factory.getbasetemp() / "tiny_run_hf"
  if not (path / "config.json").exists():
    export.export(config(), run, str(path))
  return str(path)
