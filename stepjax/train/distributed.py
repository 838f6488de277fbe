"""Multi-host start-up: `jax.distributed.initialize` when configured.

`distributed.initialize`: "auto" initializes on Cloud TPU pods (detected by
the TPU worker environment; JAX then finds the coordinator itself) and when
a coordinator address is configured; "yes" always; "no" never. On CPU with
several processes, collectives go through gloo.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from absl import logging

from stepjax.errors import InputError

_TPU_POD_ENV = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def _on_tpu_pod() -> bool:
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


def maybe_initialize(dist: Any) -> bool:
  """Initializes jax.distributed per `config.distributed`; True if it did."""
  mode = dist.initialize
  if mode not in ("auto", "yes", "no"):
    raise InputError(
      f"--config.distributed.initialize={mode!r}: expected auto, yes or no"
    )
  explicit = bool(dist.coordinator_address)
  if mode == "no" or (mode == "auto" and not (explicit or _on_tpu_pod())):
    return False
  kwargs = {}
  if explicit:
    kwargs = dict(
      coordinator_address=dist.coordinator_address,
      num_processes=int(dist.num_processes),
      process_id=int(dist.process_id),
    )
    if kwargs["num_processes"] < 1 or kwargs["process_id"] < 0:
      raise InputError(
        "--config.distributed.coordinator_address is set: also set "
        "distributed.num_processes and distributed.process_id"
      )
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if "cpu" in platforms or (explicit and not _on_tpu_pod()):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  logging.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def all_processes(value: Any) -> list[Any]:
  """[value of process 0, value of process 1, ...]: a JSON-serialisable
  value from every process, in process order (a collective: every process
  must call it). One process: [value], without any communication."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils

  text = json.dumps(value, default=_plain)
  blob = np.frombuffer(text.encode("utf-8"), np.uint8)
  sizes = multihost_utils.process_allgather(np.int64(blob.size))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[: blob.size] = blob
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [
    json.loads(bytes(row[: int(n)]).decode("utf-8"))
    for row, n in zip(gathered, np.asarray(sizes).reshape(-1))
  ]


def _plain(value: Any) -> Any:
  """numpy scalars and arrays as plain JSON values."""
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"cannot send a {type(value).__name__} to other processes")
