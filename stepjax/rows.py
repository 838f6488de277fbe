"""Row placement read from array names: the batch axis of every array.

Arrays in stepjax name their shapes (`prompt_ids_PxT`, `positions_3xPxT`,
`k_BxGxSxK`). The first of the row letters B (completions), P (prompts) or
I (image slots, M per prompt: `stepjax/image_slots.py`) in that suffix is
the array's row axis, and the row axis is what data parallelism splits over
the mesh's batch axes (`data`, `fsdp`). So a pytree of named arrays (a
dict, or a `flax.struct.dataclass` whose fields are named this way) is
placed, gathered and constrained without per-module lists of keys.

  place(tree, mesh)      this process's rows -> global arrays split by row
  local(tree, mesh)      global arrays -> this process's rows (numpy)
  constrain(tree, mesh)  inside jit: keep rows split over the batch axes
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
ROW_LETTERS = ("B", "P", "I")


def row_axis(name: str) -> int:
  """Index of the row axis in a shape-suffixed name ("positions_3xPxT" -> 1)."""
  dims = name.rsplit("_", 1)[-1].split("x")
  for i, dim in enumerate(dims):
    if dim in ROW_LETTERS:
      return i
  raise ValueError(
    f"{name!r} names no row axis: its shape suffix needs one of "
    f"{'/'.join(ROW_LETTERS)} (e.g. ids_BxT)"
  )


def row_letter(name: str) -> str:
  """The row letter of a shape-suffixed name ("pixels_IxNxP" -> "I")."""
  return name.rsplit("_", 1)[-1].split("x")[row_axis(name)]


def leaf_name(path) -> str:
  """The name of the leaf at a tree path (its dataclass field or dict key)."""
  last = path[-1]
  for attr in ("name", "key"):
    if hasattr(last, attr):
      return str(getattr(last, attr))
  raise ValueError(f"cannot name the leaf at {jax.tree_util.keystr(path)}")


def spec(name: str, ndim: int) -> P:
  """The PartitionSpec of a named array: rows over the batch axes."""
  out = [None] * ndim
  out[row_axis(name)] = BATCH_AXES
  return P(*out)


def batch_shards(mesh: Mesh) -> int:
  """How many ways rows are split: data x fsdp."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def local_shards(mesh: Mesh) -> int:
  """Row shards held by this process (each process holds the same number)."""
  shards, nproc = batch_shards(mesh), jax.process_count()
  if shards % nproc:
    raise ValueError(
      f"the {shards} batch shards of the mesh (data x fsdp) do not split "
      f"over {nproc} processes"
    )
  return shards // nproc


def place(tree: Any, mesh: Mesh) -> Any:
  """Global arrays from this process's rows of every named leaf; the
  global rows are the processes' rows concatenated in process order.

  A leaf that is already a global array on `mesh` (placed before, or the
  output of a jitted function on it) is kept, moved to the row split if
  it has another layout; any other array is this process's rows.
  """

  def put(path, x):
    sharding = NamedSharding(mesh, spec(leaf_name(path), np.ndim(x)))
    if on_mesh(x, mesh):
      return x if x.sharding == sharding else jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map_with_path(put, tree)


def on_mesh(x: Any, mesh: Mesh) -> bool:
  """True for a global jax.Array laid out on `mesh` (a NamedSharding)."""
  sharding = getattr(x, "sharding", None)
  return (
    isinstance(x, jax.Array)
    and isinstance(sharding, NamedSharding)
    and sharding.mesh == mesh
  )


def local(tree: Any, mesh: Mesh) -> Any:
  """Host numpy copies of this process's rows of global row-split arrays."""

  def get(path, x):
    pspec = spec(leaf_name(path), x.ndim)
    if jax.process_count() == 1:
      return np.asarray(jax.device_get(x))
    host = multihost_utils.global_array_to_host_local_array(x, mesh, pspec)
    return np.asarray(host)

  return jax.tree_util.tree_map_with_path(get, tree)


def constrain(tree: Any, mesh: Mesh | None) -> Any:
  """Inside jit: every named leaf's rows split over the batch axes (no-op
  without a mesh)."""
  if mesh is None:
    return tree

  def fix(path, x):
    pspec = spec(leaf_name(path), x.ndim)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, pspec))

  return jax.tree_util.tree_map_with_path(fix, tree)
