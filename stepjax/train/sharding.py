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


def place_batch(batch: Any, mesh: Mesh) -> Any:
  """Places a batch (`train/batches.py`, or any tree of named arrays) of
  this process's rows on the mesh: per-row arrays split over (data, fsdp),
  the fields declared `rows.replicated_field` (the image slots) gathered
  from all processes in process order and replicated, each `ImageSlots`
  index renumbered to the gathered prompts (`image_slots.
  global_numbering`). Arrays already on `mesh` are kept (`rows.place`)."""
  return rows.place(image_slots.global_numbering(batch, mesh), mesh)


def local_batch(batch: Any, mesh: Mesh) -> Any:
  """This process's part (numpy) of a batch whose arrays may be placed on
  `mesh` (`place_batch`'s inverse): its rows, its share of the replicated
  image slots, their index numbered from its own first prompt again."""
  return image_slots.local_numbering(rows.local(batch, mesh))
