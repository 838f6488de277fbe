"""Shared helpers for the trainer tests (not a test module)."""

import importlib.util
import pathlib

import jax
import numpy as np

from stepjax import config_utils

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_config(**overrides):
  """configs/synthmed_tiny.py:test with dotted-key overrides."""
  spec = importlib.util.spec_from_file_location(
    "synthmed_tiny", REPO / "configs" / "synthmed_tiny.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return config_utils.with_updates(module.get_config("test"), overrides)


def flat_params(params) -> dict[str, np.ndarray]:
  """Parameter path -> host numpy array."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {
    jax.tree_util.keystr(path): np.asarray(jax.device_get(x))
    for path, x in leaves
  }


def max_abs_diff(a: dict, b: dict) -> float:
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
