"""Row placement read from array names: the batch axis of every array.

Arrays in stepjax name their shapes (`prompt_ids_PxT`, `positions_3xPxT`,
`k_BxGxSxK`). The first of the row letters B (completions), P (prompts) or
I (image slots, M per prompt: `stepjax/image_slots.py`) in that suffix is
the array's row axis, and the row axis is what data parallelism splits over
the mesh's batch axes (`data`, `fsdp`). So a pytree of named arrays (a
dict, or a `flax.struct.dataclass` whose fields are named this way) is
placed, gathered and constrained without per-module lists of keys.

A dataclass field declared with `replicated_field()` is the exception: every
device holds its arrays whole (the update batch's image slots, which every
device encodes). Placing gathers them from all processes, concatenated along
their first axis in process order; `local` takes this process's part back.

  place(tree, mesh)      this process's rows -> global arrays split by row
  local(tree, mesh)      global arrays -> this process's rows (numpy)
  constrain(tree, mesh)  inside jit: keep rows split over the batch axes
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
ROW_LETTERS = ("B", "P", "I")
_REPLICATED = "rows.replicated"  # the field metadata `replicated_field` sets


def replicated_field(**kwargs) -> Any:
  """A `flax.struct.dataclass` field whose arrays every device holds whole
  instead of split by row (see the module doc); `kwargs` go to
  `dataclasses.field` (e.g. default=None)."""
  return flax.struct.field(metadata={_REPLICATED: True}, **kwargs)


def is_replicated(tree: Any, path) -> bool:
  """True when the leaf of `tree` at `path` lies under a `replicated_field`."""
  node = tree
  for key in path:
    if isinstance(key, jax.tree_util.GetAttrKey):
      if dataclasses.is_dataclass(node):
        fields = {f.name: f for f in dataclasses.fields(node)}
        field = fields.get(key.name)
        if field is not None and field.metadata.get(_REPLICATED):
          return True
      node = getattr(node, key.name)
    elif isinstance(key, jax.tree_util.DictKey):
      node = node[key.key]
    elif isinstance(key, jax.tree_util.SequenceKey):
      node = node[key.idx]
    else:
      return False
  return False


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


def _map(fn, tree: Any) -> Any:
  """`fn(x, pspec, replicated)` on every leaf: its PartitionSpec (P() under
  a `replicated_field`, else rows over the batch axes) and which it is."""

  def leaf(path, x):
    if is_replicated(tree, path):
      return fn(x, P(), True)
    return fn(x, spec(leaf_name(path), np.ndim(x)), False)

  return jax.tree_util.tree_map_with_path(leaf, tree)


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
  Leaves under a `replicated_field` are gathered from every process the
  same way (along their first axis) and replicated.

  A leaf that is already a global array on `mesh` (placed before, or the
  output of a jitted function on it) is kept, moved to its layout if it
  has another one; any other array is this process's part.
  """

  def put(x, pspec, replicated):
    sharding = NamedSharding(mesh, pspec)
    if on_mesh(x, mesh):
      return x if x.sharding == sharding else jax.device_put(x, sharding)
    x = np.asarray(x)
    if not replicated:
      return jax.make_array_from_process_local_data(sharding, x)
    if jax.process_count() > 1:
      x = np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.make_array_from_process_local_data(sharding, x, x.shape)

  return _map(put, tree)


def on_mesh(x: Any, mesh: Mesh) -> bool:
  """True for a global jax.Array laid out on `mesh` (a NamedSharding)."""
  sharding = getattr(x, "sharding", None)
  return (
    isinstance(x, jax.Array)
    and isinstance(sharding, NamedSharding)
    and sharding.mesh == mesh
  )


def local(tree: Any, mesh: Mesh) -> Any:
  """Host numpy copies of this process's part of every leaf: its rows of
  the row-split ones, its share of the first axis of the replicated ones
  (`place`'s inverse). A leaf that is not on `mesh` is this process's
  part already."""

  def get(x, pspec, replicated):
    if not on_mesh(x, mesh):
      return np.asarray(x)
    if jax.process_count() == 1:
      return np.asarray(jax.device_get(x))
    if replicated:
      full = np.asarray(x.addressable_data(0))  # a whole copy
      share = full.shape[0] // jax.process_count()
      return full[jax.process_index() * share :][:share]
    host = multihost_utils.global_array_to_host_local_array(x, mesh, pspec)
    return np.asarray(host)

  return _map(get, tree)


def constrain(tree: Any, mesh: Mesh | None) -> Any:
  """Inside jit: every named leaf's rows split over the batch axes, the
  leaves under a `replicated_field` replicated (no-op without a mesh)."""
  if mesh is None:
    return tree

  def fix(x, pspec, replicated):
    del replicated
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, pspec))

  return _map(fix, tree)
