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
state stays on disk. Parameters are placed with the trainer's shardings
for `config.mesh` and `config.logical_axis_rules`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from stepjax import config_utils, errors
from stepjax.data import tokenizer as tokenizer_lib
from stepjax.errors import InputError, MissingInputError
from stepjax.models import config as config_lib
from stepjax.models import hf_convert
from stepjax.train import checkpoint as checkpoint_lib
from stepjax.train import components, policy, sharding

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclasses.dataclass
class LoadedPolicy:
  """A policy ready for sampling.

  config: the job config, with `init_from` / `tokenizer.path` pointing at
    an HF checkpoint when that is what was loaded.
  graphs: static halves (`graphs.policy` is the graphdef for the sampler).
  params / value_params: nnx.State pytrees (value_params None when the
    checkpoint has no step-value head, e.g. an HF directory).
  kind: "hf" or "orbax". run_dir: the training run's directory ("" when
    unknown), for its metrics.jsonl. step: the checkpoint's step (Orbax).
  """

  config: Any
  cfg: config_lib.ModelConfig
  graphs: policy.Graphs
  params: Any
  value_params: Any
  tokenizer: Any
  tok_info: tokenizer_lib.TokenizerInfo
  mesh: jax.sharding.Mesh
  kind: str
  path: str
  run_dir: str = ""
  step: int | None = None


@dataclasses.dataclass(frozen=True)
class Location:
  """Where an Orbax checkpoint lives: a manager directory and a step, or a
  single step directory holding `state`."""

  kind: str  # "hf" | "orbax"
  manager_dir: str = ""  # the `checkpoints/` folder (latest step used)
  step_dir: str = ""  # one step's folder, when given directly
  run_dir: str = ""


def locate(path: str, flag: str = "--checkpoint") -> Location:
  """Classifies `path` (see the module docstring); errors name `flag`."""
  if not path:
    raise InputError(f"{flag} is required: a run directory or HF directory")
  path = checkpoint_lib.absolute(path)
  p = epath.Path(path)
  if not p.exists():
    raise MissingInputError(f"{flag}={path}: no such file or directory")
  if policy.is_hf_dir(path):
    return Location("hf")
  if (p / "checkpoints").is_dir():
    return Location("orbax", manager_dir=str(p / "checkpoints"), run_dir=path)
  parent_run = lambda d: str(d.parent) if d.name == "checkpoints" else ""
  if (p / "state").is_dir():
    return Location("orbax", step_dir=path, run_dir=parent_run(p.parent))
  return Location("orbax", manager_dir=path, run_dir=parent_run(p))


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


def _restore_orbax(
  loc: Location,
  abstract_params: Any,
  abstract_value: Any,
  checkpoint: str,
  model: Any = None,
) -> tuple[Any, Any, int | None]:
  """(params, value params or None, step): a partial restore of `state`.

  model: the config's `model` block, checked against the one saved with
  the checkpoint before any array is read (None: not checked)."""
  target = {"params": abstract_params}
  has_value = bool(jax.tree.leaves(abstract_value))
  if has_value:
    target["value_params"] = abstract_value
  restore_args = jax.tree.map(
    lambda x: ocp.ArrayRestoreArgs(
      sharding=x.sharding, global_shape=x.shape, dtype=x.dtype
    ),
    target,
  )
  args = ocp.args.PyTreeRestore(
    target, restore_args=restore_args, partial_restore=True
  )
  errors.quiet_failed_restore_reports()
  if loc.step_dir:
    state_dir = epath.Path(loc.step_dir) / "state"
    _check_same_model(epath.Path(loc.step_dir), model, checkpoint)
    try:
      restored = ocp.PyTreeCheckpointer().restore(state_dir, args=args)
    except Exception as e:  # noqa: BLE001 - damage or another model
      raise InputError(
        f"--checkpoint={checkpoint}: cannot read {state_dir} "
        f"({_first_line(e)}): its files are damaged (pick another step) "
        "or --config describes another model (use the config the run was "
        "trained with: model.preset, tokenizer.path, init_from, "
        "model.step_value_hidden)"
      ) from e
    step = None
  else:
    restored, step = _restore_newest_readable(
      loc.manager_dir, args, checkpoint, model
    )
  value = restored.get("value_params") if has_value else None
  return restored["params"], value, step


def _restore_newest_readable(
  manager_dir: str, args: Any, checkpoint: str, model: Any = None
) -> tuple[Any, int]:
  """(the restored `state` item, its step): the newest checkpoint under
  `manager_dir` that can be read. One that cannot is reported by step and
  path and the next older one is tried; the files are left where they are
  (evaluation never changes a run). When no step can be read and every
  failure was a structure error, the parameters do not fit the model of
  --config (the same model reads every step of a run)."""
  manager = ocp.CheckpointManager(
    epath.Path(manager_dir),
    item_names=("state",),
    item_handlers={"state": ocp.PyTreeCheckpointHandler()},
  )
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise MissingInputError(
      f"--checkpoint={checkpoint}: no Orbax checkpoint found (expected "
      "a run directory, its checkpoints/ folder, a step folder holding "
      "`state`, or an HF directory with config.json)"
    )
  problems, mismatch = [], None
  for step in steps:
    path = epath.Path(manager_dir) / str(step)
    _check_same_model(path, model, checkpoint)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(state=args))
    except Exception as e:  # noqa: BLE001 - damage or another model
      if isinstance(e, (ValueError, KeyError)) and mismatch is None:
        mismatch = e
      problems.append(f"checkpoint {step} ({path}): {_first_line(e)}")
      continue
    for problem in problems:  # reported only when an older step was read
      print(f"warning: cannot read {problem}", flush=True)
    if problems:
      print(f"warning: using checkpoint {step} ({path})", flush=True)
    return restored["state"], step
  if mismatch is not None and len(problems) == len(steps):
    raise _mismatch(checkpoint, mismatch) from mismatch
  raise InputError(
    f"--checkpoint={checkpoint}: no readable checkpoint: " + "; ".join(problems)
  )


# What shapes the stored parameters, in the model block saved with each
# checkpoint's run info (the compute dtype, remat and attention do not).
_SHAPE_KEYS = ("preset", "step_value_hidden")


def _check_same_model(step_dir: epath.Path, model: Any, checkpoint: str):
  """InputError naming both values when checkpoint `step_dir` was saved
  for another model than `model` (the config's `model` block); read before
  the arrays, so a mismatch is not found halfway through a restore. Says
  nothing when the run info cannot be read (the restore reports that)."""
  if model is None:
    return
  try:
    info = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
      step_dir / "info", args=ocp.args.JsonRestore()
    )
    saved = dict(info.get("model") or {})
  except Exception:  # noqa: BLE001 - no or damaged run info: not checked
    return
  changes = checkpoint_lib.model_changes(
    saved, model, tuple(k for k in _SHAPE_KEYS if k in saved)
  )
  if changes:
    raise InputError(
      f"--checkpoint={checkpoint}: checkpoint {step_dir.name} holds another "
      f"model ({changes}); evaluate it with the config it was trained with"
    )


def _mismatch(checkpoint: str, error: Exception) -> InputError:
  return InputError(
    f"--checkpoint={checkpoint}: its parameters do not fit the model of "
    "--config (use the config the run was trained with: model.preset, "
    f"tokenizer.path, init_from, model.step_value_hidden): {error}"
  )


def _first_line(error: Exception) -> str:
  """The first line of what went wrong: the cause's where the error wraps
  one (Orbax wraps TensorStore's read errors in a bare Exception)."""
  error = error.__cause__ or error
  lines = str(error).strip().splitlines() or [""]
  return f"{type(error).__name__}: {lines[0]}"[:300]


def load(config: Any, checkpoint: str) -> LoadedPolicy:
  """Loads the policy in `checkpoint` (see the module docstring)."""
  loc = locate(checkpoint)
  config = config_for(config, checkpoint)
  tokenizer, tok_info = components.load_tokenizer(config)
  cfg = policy.model_config(config, tok_info)
  graphs, abstract_params, abstract_value = policy.abstract(cfg)
  mesh = sharding.make_mesh(config.mesh)
  shardings = param_shardings(abstract_params, config, mesh)
  step = None
  if loc.kind == "hf":
    _, params = hf_convert.load_hf(checkpoint, cfg, shardings)
    value_params = None
  else:
    target = checkpoint_lib.abstract_with_shardings(abstract_params, shardings)
    value_target = checkpoint_lib.abstract_with_shardings(
      abstract_value, param_shardings(abstract_value, config, mesh)
    )
    params, value_params, step = _restore_orbax(
      loc, target, value_target, checkpoint, config.model
    )
  return LoadedPolicy(
    config=config,
    cfg=cfg,
    graphs=graphs,
    params=params,
    value_params=value_params,
    tokenizer=tokenizer,
    tok_info=tok_info,
    mesh=mesh,
    kind=loc.kind,
    path=checkpoint,
    run_dir=loc.run_dir,
    step=step,
  )
