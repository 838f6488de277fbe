"""Loading a trained policy for `stepjax eval`, `generate` and `export`.

`--checkpoint` may name
  - an HF directory (config.json + model.safetensors, and the tokenizer
    files when written by `stepjax export`): the model config comes from
    config.json, the tokenizer from the directory itself if it holds one,
    else from `--config.tokenizer.path`;
  - a run directory (`stepjax train --workdir`): its latest checkpoint
    under `checkpoints/` (and its metrics.jsonl for training curves);
  - an Orbax checkpoint directory: the `checkpoints/` folder of a run (the
    latest step) or one step's folder (`checkpoints/N`, holding `state`).
A latest checkpoint that cannot be read is reported by step and path and
the previous one is used (its files are left as they are); a checkpoint
saved for another model (model.preset, model.step_value_hidden in its run
info) is refused before any array is read, naming both values.
For Orbax checkpoints the model is the one `--config` describes (same
config as training: `model.preset`, `tokenizer.path`, `init_from`); only
the policy's (and step-value head's) parameters are read, the optimizer
state stays on disk, by `train.checkpoint.restore_params` (the reader the
trainer's `init_from` uses too). Parameters are placed with the trainer's
shardings for `config.mesh` and `config.logical_axis_rules`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from etils import epath

from stepjax import config_utils
from stepjax.errors import InputError, MissingInputError
from stepjax.models import hf_convert
from stepjax.train import checkpoint as checkpoint_lib
from stepjax.train import components, policy, sharding

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadedPolicy(policy.Policy):
  """A `train.policy.Policy` read from a checkpoint, with where it came
  from (value_params None when the checkpoint has no step-value head, e.g.
  an HF directory).

  config: the job config, with `init_from` / `tokenizer.path` pointing at
    an HF checkpoint when that is what was loaded.
  kind: "hf" or "orbax". path: the checkpoint as given. run_dir: the
    training run's directory ("" when unknown), for its metrics.jsonl.
    step: the checkpoint's step (Orbax).
  """

  config: Any
  kind: str
  path: str
  run_dir: str = ""
  step: int | None = None


def locate(path: str, flag: str = "--checkpoint") -> checkpoint_lib.Location:
  """Classifies `path` (see the module docstring); errors name `flag`."""
  if not path:
    raise InputError(f"{flag} is required: a run directory or HF directory")
  path = checkpoint_lib.absolute(path)
  if not epath.Path(path).exists():
    raise MissingInputError(f"{flag}={path}: no such file or directory")
  if policy.is_hf_dir(path):
    return checkpoint_lib.Location("hf")
  return checkpoint_lib.locate_orbax(path)


def with_updates(config: Any, **updates: Any) -> Any:
  """A copy of the (locked) job config with dotted keys set."""
  return config_utils.with_updates(config, updates)


def has_tokenizer(directory: str) -> bool:
  d = epath.Path(directory)
  return any((d / f).exists() for f in _TOKENIZER_FILES)


def config_for(config: Any, checkpoint: str) -> Any:
  """The job config that builds the model stored in `checkpoint`."""
  if locate(checkpoint).kind != "hf":
    return config
  updates = {"init_from": checkpoint}
  if has_tokenizer(checkpoint):
    updates["tokenizer.path"] = checkpoint
  return with_updates(config, **updates)


def param_shardings(abstract_params: Any, config: Any, mesh) -> Any:
  """The trainer's NamedShardings for the params of `config.mesh`."""
  return sharding.state_shardings(
    abstract_params, mesh, config.logical_axis_rules
  )


def load(
  config: Any, checkpoint: str, flag: str = "--checkpoint"
) -> LoadedPolicy:
  """Loads the policy in `checkpoint` (see the module docstring); errors
  name `flag`, the option (or argument) that gave it."""
  loc = locate(checkpoint, flag)
  config = config_for(config, checkpoint)
  tokenizer, tok_info = components.load_tokenizer(config)
  cfg = policy.model_config(config, tok_info)
  graphs, abstract_params, abstract_value = policy.abstract(cfg)
  mesh = sharding.make_mesh(config.mesh)
  shardings = param_shardings(abstract_params, config, mesh)
  if loc.kind == "hf":
    _, params = hf_convert.load_hf(checkpoint, cfg, shardings)
    value_params, step = None, None
  else:
    restored = checkpoint_lib.restore_params(
      checkpoint,
      checkpoint_lib.abstract_with_shardings(abstract_params, shardings),
      checkpoint_lib.abstract_with_shardings(
        abstract_value, param_shardings(abstract_value, config, mesh)
      ),
      model=config.model,
      flag=flag,
    )
    params, value_params = restored.params, restored.value_params
    step = restored.step
  return LoadedPolicy(
    graphs=graphs,
    params=params,
    tokenizer=tokenizer,
    tok_info=tok_info,
    mesh=mesh,
    value_params=value_params,
    config=config,
    kind=loc.kind,
    path=checkpoint,
    run_dir=loc.run_dir,
    step=step,
  )
