"""One Orbax CheckpointManager for train state, data iterator and run info.

Each checkpoint holds three items written together and atomically (Orbax
writes to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact):
  state: the TrainState pytree (params, optimizer state, step-value head,
    step, RNG), restored directly into its shardings;
  data: the Grain iterator state (one JSON file per process);
  info: JSON with the phase, config summary and eval results so far;
  ref (when RL uses a KL penalty): the frozen reference policy's params, so
    a resumed run keeps the reference it started RL with.
Restore order (see `loop.py`): latest in the workdir, else `init_from`, else
fresh init.

`restore_params` is the one way to read a policy out of a run without its
optimizer state: `init_from` (the trainer), `stepjax eval`, `generate`,
`export` and the benchmark suite (`eval/checkpoints.py`) all go through
it. A run's own resume (`Checkpointer.restore`) reads the whole state and
shares the run info and failure reports with it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from stepjax import errors
from stepjax.errors import InputError, MissingInputError


def absolute(path: str) -> str:
  """Orbax needs absolute paths: local relative paths are made absolute,
  URLs (gs://...) pass unchanged."""
  path = str(path)
  return path if "://" in path else os.path.abspath(path)


# Model keys a checkpoint saved before they existed held at these values.
_MODEL_DEFAULTS = {"step_value_input": "last"}


def saved_model(info: dict[str, Any] | None) -> dict[str, Any]:
  """The model block saved in a checkpoint's run `info`, with the keys it
  predates at the value they then held ({} when none was saved)."""
  saved = dict((info or {}).get("model") or {})
  return {**_MODEL_DEFAULTS, **saved} if saved else {}


def model_changes(
  saved: dict[str, Any] | None, current: Any, keys: tuple[str, ...]
) -> str:
  """ "model.K: saved A, config B, ..." for each of `keys` where the model
  block saved with a checkpoint's run info differs from the config's
  `current` one ("" when none differs or none was saved)."""
  if not saved:
    return ""
  return ", ".join(
    f"model.{k}: saved {saved.get(k)!r}, config {current.get(k)!r}"
    for k in keys
    if saved.get(k) != current.get(k)
  )


class Checkpointer:
  """Saves and restores (state, data iterator, info) under `directory`."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = epath.Path(absolute(directory))
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False
    )
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_names=("state", "data", "info", "ref"),
      item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "ref": ocp.StandardCheckpointHandler(),
        "data": grain.checkpoint.CheckpointHandler(),
        "info": ocp.JsonCheckpointHandler(),
      },
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """Finished checkpoint steps, newest first."""
    return sorted(self.manager.all_steps(), reverse=True)

  def step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def set_aside(self, step: int) -> epath.Path:
    """Moves checkpoint `step` (one that cannot be read) out of the way, to
    `<directory>_unreadable/<step>`, keeping it for inspection; returns the
    new path. Only process 0 moves it; every process forgets the step."""
    target = epath.Path(f"{self.directory}_unreadable") / str(step)
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      if target.exists():
        target = target.with_name(
          f"{step}.{len(list(target.parent.iterdir()))}"
        )
      self.step_dir(step).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"stepjax_set_aside_{step}")
    self.manager.reload()
    return target

  def save(
    self,
    step: int,
    state: Any,
    iterator: Any | None,
    info: dict[str, Any],
    ref: Any | None = None,
  ) -> None:
    items = {
      "state": ocp.args.StandardSave(state),
      "info": ocp.args.JsonSave(info),
    }
    if iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(iterator)
    if ref is not None:
      items["ref"] = ocp.args.StandardSave(ref)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    self.manager.wait_until_finished()

  def restore(
    self,
    step: int,
    abstract_state: Any,
    iterator: Any | None,
    abstract_ref: Any | None = None,
  ) -> tuple[Any, dict[str, Any], Any]:
    """Restores (state, info, ref) with the shardings of the abstract trees.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with `.sharding`
    set; `iterator` (if given) is advanced in place to the saved position;
    `abstract_ref` (if given) restores the reference params.
    """
    items = {
      "state": ocp.args.StandardRestore(abstract_state),
      "info": ocp.args.JsonRestore(),
    }
    if iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(iterator)
    if abstract_ref is not None:
      items["ref"] = ocp.args.StandardRestore(abstract_ref)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    ref = restored["ref"] if abstract_ref is not None else None
    return restored["state"], dict(restored["info"]), ref

  def info(self, step: int) -> dict[str, Any]:
    """The run info saved with checkpoint `step`."""
    return read_info(self.step_dir(step))

  def close(self) -> None:
    self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` carrying `shardings` (for restore)."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    tree,
    shardings,
  )


def read_info(step_dir: epath.Path) -> dict[str, Any]:
  """The run info saved with the checkpoint in `step_dir`."""
  info = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
    step_dir / "info", args=ocp.args.JsonRestore()
  )
  return dict(info)


def first_line(error: Exception) -> str:
  """The first line of what went wrong: the cause's where the error wraps
  one (Orbax wraps TensorStore's read errors in a bare Exception)."""
  error = error.__cause__ or error
  lines = str(error).strip().splitlines() or [""]
  return f"{type(error).__name__}: {lines[0]}"[:300]


# ------------------------------------------------------- params of a run


@dataclasses.dataclass(frozen=True)
class Location:
  """Where a policy is stored. kind: "hf" (a transformers directory, see
  `train.policy.is_hf_dir`) or "orbax": then a manager directory (the
  `checkpoints/` folder; its newest readable step is used) or one step's
  folder holding `state`, and the run directory around them ("" when
  unknown, e.g. a step folder named outside a run)."""

  kind: str = "orbax"
  manager_dir: str = ""
  step_dir: str = ""
  run_dir: str = ""


def locate_orbax(path: str) -> Location:
  """Classifies an Orbax `path`: a run directory (holding `checkpoints/`),
  a `checkpoints/` folder, or one step's folder (holding `state`)."""
  path = absolute(path)
  p = epath.Path(path)
  if (p / "checkpoints").is_dir():
    return Location(manager_dir=str(p / "checkpoints"), run_dir=path)
  parent_run = lambda d: str(d.parent) if d.name == "checkpoints" else ""
  if (p / "state").is_dir():
    return Location(step_dir=path, run_dir=parent_run(p.parent))
  return Location(manager_dir=path, run_dir=parent_run(p))


@dataclasses.dataclass(frozen=True)
class RestoredParams:
  """What `restore_params` read. value_params: None unless asked for.
  step: the checkpoint's step (None when a step folder was named)."""

  params: Any
  value_params: Any
  step: int | None
  location: Location


# What shapes the stored parameters, in the model block saved with each
# checkpoint's run info (the compute dtype, remat and attention do not;
# the parameter dtype is cast on reading).
_POLICY_SHAPE_KEYS = ("preset",)
_VALUE_SHAPE_KEYS = ("step_value_hidden", "step_value_input")


def restore_params(
  path: str,
  target_params: Any,
  target_value: Any = None,
  *,
  model: Any = None,
  flag: str = "--checkpoint",
) -> RestoredParams:
  """The policy's (and with `target_value` the step-value head's)
  parameters of the Orbax checkpoint at `path` (`locate_orbax`), read
  into the shardings of the targets; the optimizer state stays on disk.

  Args:
    path: a run directory, its `checkpoints/` folder or one step's folder.
    target_params / target_value: ShapeDtypeStruct trees with `.sharding`
      (`abstract_with_shardings`).
    model: the config's `model` block; a checkpoint saved for another
      model (`model.preset`, and `model.step_value_hidden` /
      `model.step_value_input` when the head is read) is refused before
      any array is read, naming both values.
    flag: what errors name `path` by (`--checkpoint`,
      `--config.init_from`).

  Of a manager directory the newest readable step is read; one that cannot
  be read is reported by step and path and the next older one tried. The
  files are never moved or changed (this reads another run, or one being
  evaluated); a run's own resume sets damaged steps aside instead.
  """
  loc = locate_orbax(path)
  target = {"params": target_params}
  keys = _POLICY_SHAPE_KEYS
  if target_value is not None and jax.tree.leaves(target_value):
    target["value_params"] = target_value
    keys += _VALUE_SHAPE_KEYS
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
  where = _Where(path, flag, model, keys)
  if loc.step_dir:
    restored, step = _restore_step_dir(loc.step_dir, args, where), None
  else:
    restored, step = _restore_newest_readable(loc.manager_dir, args, where)
  return RestoredParams(
    params=restored["params"],
    value_params=restored.get("value_params"),
    step=step,
    location=loc,
  )


@dataclasses.dataclass(frozen=True)
class _Where:
  """What `restore_params` was asked to read, for its checks and errors."""

  path: str
  flag: str
  model: Any
  keys: tuple[str, ...]

  @property
  def name(self) -> str:
    return f"{self.flag}={self.path}"


def _restore_step_dir(step_dir: str, args: Any, where: _Where) -> Any:
  state_dir = epath.Path(step_dir) / "state"
  _check_same_model(epath.Path(step_dir), where)
  try:
    return ocp.PyTreeCheckpointer().restore(state_dir, args=args)
  except Exception as e:  # noqa: BLE001 - damage or another model
    raise InputError(
      f"{where.name}: cannot read {state_dir} ({first_line(e)}): its files "
      "are damaged (pick another step) or --config describes another "
      "model (use the config the run was trained with: model.preset, "
      "tokenizer.path, init_from, model.step_value_hidden)"
    ) from e


def _restore_newest_readable(
  manager_dir: str, args: Any, where: _Where
) -> tuple[Any, int]:
  """(the restored `state` item, its step): the newest checkpoint under
  `manager_dir` that can be read. When no step can be read and every
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
      f"{where.name}: no Orbax checkpoint found (expected a run directory, "
      "its checkpoints/ folder, a step folder holding `state`, or an HF "
      "directory with config.json)"
    )
  problems, mismatch = [], None
  for step in steps:
    path = epath.Path(manager_dir) / str(step)
    _check_same_model(path, where)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(state=args))
    except Exception as e:  # noqa: BLE001 - damage or another model
      if isinstance(e, (ValueError, KeyError)) and mismatch is None:
        mismatch = e
      problems.append(f"checkpoint {step} ({path}): {first_line(e)}")
      continue
    for problem in problems:  # reported only when an older step was read
      print(f"warning: cannot read {problem}", flush=True)
    if problems:
      print(f"warning: using checkpoint {step} ({path})", flush=True)
    return restored["state"], step
  if mismatch is not None and len(problems) == len(steps):
    raise InputError(
      f"{where.name}: its parameters do not fit the model of --config (use "
      "the config the run was trained with: model.preset, tokenizer.path, "
      f"init_from, model.step_value_hidden): {mismatch}"
    ) from mismatch
  raise InputError(
    f"{where.name}: no readable checkpoint: " + "; ".join(problems)
  )


def _check_same_model(step_dir: epath.Path, where: _Where) -> None:
  """InputError naming both values when checkpoint `step_dir` was saved
  for another model than `where.model`; read before the arrays, so a
  mismatch is not found halfway through a restore. Says nothing when the
  run info cannot be read (the restore reports that)."""
  if where.model is None:
    return
  try:
    saved = saved_model(read_info(step_dir))
  except Exception:  # noqa: BLE001 - no or damaged run info: not checked
    return
  changes = model_changes(
    saved, where.model, tuple(k for k in where.keys if k in saved)
  )
  if changes:
    raise InputError(
      f"{where.name}: checkpoint {step_dir.name} holds another model "
      f"({changes}); load it with the config it was trained with"
    )
