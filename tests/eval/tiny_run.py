"""A tiny SynthMed run trained once per pytest session (not a test module).

Test modules load this file by path and call `run_dir(tmp_path_factory)`:
the run lives under the session's base temp dir, so every module of the
session reuses one training (~30 s) and one HF export.
"""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]


def config(**overrides):
  """configs/synthmed_tiny.py:test on one device, 4 eval records."""
  spec = importlib.util.spec_from_file_location(
    "synthmed_tiny", REPO / "configs" / "synthmed_tiny.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("test")
  values = {"mesh.data": 1, "data.num_eval": 4}
  values.update(overrides)
  with c.unlocked():
    for key, value in values.items():
      node = c
      *parents, last = key.split(".")
      for name in parents:
        node = node[name]
      node[last] = value
  return c


def run_dir(tmp_path_factory) -> str:
  """Trains the tiny run once per session; returns its workdir."""
  from stepjax.train import loop

  path = tmp_path_factory.getbasetemp() / "tiny_run"
  if not (path / "DONE").exists():
    loop.run(config(), str(path))
    (path / "DONE").write_text("ok\n")
  return str(path)


def hf_dir(tmp_path_factory) -> str:
  """The tiny run exported with `stepjax export` (once per session)."""
  from stepjax.train import export

  run = run_dir(tmp_path_factory)
  path = tmp_path_factory.getbasetemp() / "tiny_run_hf"
  if not (path / "config.json").exists():
    export.export(config(), run, str(path))
  return str(path)
