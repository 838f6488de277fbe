"""The device mesh, logical-axis rules and placement of state and batches.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with sharded
parameters) and `tensor` (model parallel). Model parameters carry logical axis
names (`embed`, `mlp`, `heads`, ...); `config.logical_axis_rules` maps them to
mesh axes, so one model runs on 1 CPU or a TPU pod unchanged. Batches are
split over (`data`, `fsdp`) along the row axis their array names give
(`stepjax/rows.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from stepjax import image_slots, rows
from stepjax.errors import InputError

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(
  sizes: dict[str, int], num_devices: int
) -> tuple[int, ...]:
  """Fills the one -1 axis with the remaining devices; checks the product."""
  known = [sizes[a] for a in MESH_AXES if sizes[a] != -1]
  product = math.prod(known)
  shape = []
  for axis in MESH_AXES:
    size = sizes[axis]
    if size == -1:
      if num_devices % product:
        raise InputError(
          f"--config.mesh: {num_devices} devices cannot be split with "
          f"{dict(sizes)}; the fixed axes' product {product} must divide "
          "the device count"
        )
      size = num_devices // product
    shape.append(size)
  if -1 not in sizes.values() and math.prod(shape) < num_devices:
    return tuple(shape)  # an explicit smaller mesh uses the first devices
  if math.prod(shape) != num_devices:
    raise InputError(
      f"--config.mesh: axes {dict(zip(MESH_AXES, shape))} use "
      f"{math.prod(shape)} devices but {num_devices} are available; set "
      "one axis to -1 or make the product match"
    )
  return tuple(shape)


def make_mesh(mesh_config: Any, devices: Sequence[Any] | None = None) -> Mesh:
  """Builds the (data, fsdp, tensor) mesh from `config.mesh`."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = {a: int(mesh_config[a]) for a in MESH_AXES}
  shape = resolve_mesh_shape(sizes, len(devices))
  if math.prod(shape) < len(devices):
    if jax.process_count() > 1:
      raise InputError(
        f"--config.mesh {dict(zip(MESH_AXES, shape))} uses fewer than the "
        f"{len(devices)} devices of this multi-process run; use them all"
      )
    devices = devices[: math.prod(shape)]
  if devices == list(jax.devices()):
    return jax.make_mesh(
      shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3
    )
  grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, MESH_AXES)


def check_batch_sizes(config: Any, mesh: Mesh) -> None:
  """InputError unless every batch the trainer places splits evenly over
  the batch axes (data x fsdp) of `mesh`, naming the flag to change."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  where = (
    f"the {shards} batch shards of --config.mesh (data x fsdp = "
    f"{mesh.shape['data']} x {mesh.shape['fsdp']})"
  )
  # The SFT batch and the RL update rows (prompts x G, per micro-batch) are
  # split over the batch shards. Prompts are split for sampling too, padded
  # to a multiple of the shards when they do not divide (rollout.generate).
  sft = config.sft.batch_size
  if config.sft.steps > 0 and sft % shards:
    raise InputError(
      f"--config.sft.batch_size={sft} does not split over {where}; use a "
      f"multiple of {shards}"
    )
  accum = config.optim.grad_accum
  rows = config.data.batch_size * config.sampling.group_size
  if config.train.steps > 0 and (rows % accum or (rows // accum) % shards):
    raise InputError(
      f"{rows} completions per RL step (--config.data.batch_size="
      f"{config.data.batch_size} x sampling.group_size="
      f"{config.sampling.group_size}) in --config.optim.grad_accum={accum} "
      f"micro-batches do not split over {where}; make each micro-batch a "
      f"multiple of {shards}"
    )


def rules_from_config(rules: Sequence[Sequence[Any]]) -> list[tuple]:
  """Turns the config's rule tuples into flax logical-axis rules."""
  out = []
  for rule in rules:
    logical, mesh_axes = rule[0], rule[1]
    if isinstance(mesh_axes, list):
      mesh_axes = tuple(mesh_axes)
    out.append((logical, mesh_axes))
  return out


def _dedupe(spec: P) -> P:
  """A logical name used by two dimensions shards only the first of them
  (e.g. a square `mlp x mlp` projection)."""
  seen, out = set(), []
  for name in spec:
    out.append(None if name is not None and name in seen else name)
    if name is not None:
      seen.add(name)
  return P(*out)


def state_shardings(abstract_state: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for an (abstract) nnx.State from its logical axes.

  Logical names with no rule are replicated. A dimension whose size is not
  divisible by its mesh axes is replicated instead of failing, so tiny test
  models run on any mesh.
  """
  specs = jax.tree.map(
    _dedupe,
    nnx.get_partition_spec(abstract_state),
    is_leaf=lambda x: isinstance(x, P),
  )
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules_from_config(rules))

  def fit(var_sharding, leaf):
    spec = list(var_sharding.spec) + [None] * (
      len(leaf.shape) - len(var_sharding.spec)
    )
    for i, axes in enumerate(spec):
      if axes is None:
        continue
      names = axes if isinstance(axes, tuple) else (axes,)
      if leaf.shape[i] % math.prod(mesh.shape[n] for n in names):
        spec[i] = None
    return NamedSharding(mesh, P(*spec))

  return jax.tree.map(fit, shardings, abstract_state)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# Update-batch keys that are not split by row: the P prompts' image slots,
# their metadata and owners (small; gathered from all processes and
# replicated, every device encodes them). Every other array is split by the
# row axis its name gives (`rows.row_axis`: positions_3xBxL over axis 1, the
# rest over axis 0).
_REPLICATED_KEYS = ("pixels_IxNxP", "vision_meta", "image_prompt_I")


def place_update_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
  """Places an update batch (train/steps.py layout) on the mesh.

  Per-row arrays are this process's rows of the global batch, split over
  (data, fsdp) (`rows.place`); image slots and their metadata (this
  process's prompts) are gathered from all processes in process order and
  replicated, `image_prompt_I` renumbered to the gathered prompts. Arrays
  already placed on `mesh` are kept (see `rows.place`).
  """
  split = {k: v for k, v in batch.items() if k not in _REPLICATED_KEYS}
  out = rows.place(split, mesh)
  owner = batch.get("image_prompt_I")
  if owner is not None and not rows.on_mesh(owner, mesh):
    batch = dict(batch)
    batch["image_prompt_I"] = image_slots.for_process(owner)
  for key in _REPLICATED_KEYS:
    if key in batch:
      out[key] = jax.tree.map(lambda x: _global_replicated(x, mesh), batch[key])
  return {key: out[key] for key in batch}


def _global_replicated(x: Any, mesh: Mesh) -> jax.Array:
  if rows.on_mesh(x, mesh):  # placed already (all processes' rows)
    return jax.device_put(x, NamedSharding(mesh, P()))
  x = np.asarray(x)
  if jax.process_count() > 1:
    x = np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.make_array_from_process_local_data(
    NamedSharding(mesh, P()), x, x.shape
  )


def local_update_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
  """This process's rows (numpy) of an update batch whose arrays may be
  placed on `mesh` (`place_update_batch`'s inverse): per-row arrays are
  read back by row; the replicated image slots are cut to this process's
  share (every process holds as many prompts and slots) and
  `image_prompt_I` numbered from its own first prompt again."""
  out = {}
  for key, value in batch.items():
    if key in _REPLICATED_KEYS:
      out[key] = jax.tree.map(lambda x: _local_share(x, mesh), value)
    elif rows.on_mesh(value, mesh):
      out[key] = rows.local({key: value}, mesh)[key]
    else:
      out[key] = np.asarray(value)
  owner = batch.get("image_prompt_I")
  if owner is not None and rows.on_mesh(owner, mesh):
    first = out["image_prompt_I"][:1]
    out["image_prompt_I"] = out["image_prompt_I"] - (first if first.size else 0)
  return out


def _local_share(x: Any, mesh: Mesh) -> np.ndarray:
  if not rows.on_mesh(x, mesh):
    return np.asarray(x)
  full = np.asarray(x.addressable_data(0))  # replicated: a whole copy
  if jax.process_count() == 1:
    return full
  share = full.shape[0] // jax.process_count()
  start = jax.process_index() * share
  return full[start : start + share]
