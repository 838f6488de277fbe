"""A job config as JSON: written into each run's directory, read back by
the worker that trains it.

`config.json` is the record of what a run trained and the input of
`worker.py`, so it must round-trip: JSON keeps bool, int, float, str and
None; lists come back as the tuples a job config holds.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections
from etils import epath

from stepjax.errors import InputError

CONFIG_FILE = "config.json"


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


def from_json(text: str) -> ml_collections.ConfigDict:
  """The locked ConfigDict of `to_json`'s output."""
  config = ml_collections.ConfigDict(_tuples(json.loads(text)))
  config.lock()
  return config


def write(config: ml_collections.ConfigDict, run_dir: str) -> str:
  path = epath.Path(run_dir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(to_json(config))
  return str(path)


def read(run_dir: str) -> ml_collections.ConfigDict:
  path = epath.Path(run_dir) / CONFIG_FILE
  if not path.exists():
    raise InputError(
      f"no {CONFIG_FILE} in {run_dir}; `stepjax experiment` writes it "
      "before a run starts: run that instead"
    )
  return from_json(path.read_text())


def differences(
  old: ml_collections.ConfigDict,
  new: ml_collections.ConfigDict,
  ignore: tuple[str, ...] = (),
) -> list[str]:
  """Dotted keys set in both configs to different values (a key that only
  one has, added or dropped by a newer stepjax, is not a difference)."""
  a, b = _flat(json.loads(to_json(old))), _flat(json.loads(to_json(new)))
  keys = sorted(set(a) & set(b))
  return [k for k in keys if k not in ignore and a[k] != b[k]]


def _tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out
