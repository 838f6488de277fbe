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
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from stepjax.errors import MissingInputError


def absolute(path: str) -> str:
  """Orbax needs absolute paths: local relative paths are made absolute,
  URLs (gs://...) pass unchanged."""
  path = str(path)
  return path if "://" in path else os.path.abspath(path)


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
    restored = self.manager.restore(
      step, args=ocp.args.Composite(info=ocp.args.JsonRestore())
    )
    return dict(restored["info"])

  def close(self) -> None:
    self.manager.close()


def restore_state_only(directory: str, abstract_state: Any) -> Any:
  """Restores the newest `state` item from a run directory (for init_from).

  Accepts a run's workdir (takes its latest checkpoint) or one step's
  directory holding a `state` item.
  """
  path = epath.Path(absolute(directory))
  candidates = [path / "state"] if (path / "state").exists() else []
  if not candidates:
    manager = ocp.CheckpointManager(
      path,
      item_names=("state",),
      item_handlers={"state": ocp.StandardCheckpointHandler()},
    )
    step = manager.latest_step()
    if step is None:
      raise MissingInputError(
        f"--config.init_from={directory}: no Orbax checkpoint found (and "
        "no config.json: it is not an HF directory either)"
      )
    restored = manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)),
    )
    return restored["state"]
  checkpointer = ocp.StandardCheckpointer()
  return checkpointer.restore(candidates[0], abstract_state)


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` carrying `shardings` (for restore)."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    tree,
    shardings,
  )
