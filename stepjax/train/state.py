"""The train state: a pure pytree that crosses every jit boundary.

Model modules are split once (`nnx.split`) into a static graphdef, kept
outside jit, and pure `nnx.State` pytrees, which live here.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  """step: optimizer steps taken (SFT and RL together).
  params: the policy's parameters (nnx.State).
  value_params: the step-value head's parameters (nnx.State; may be empty).
  opt_state: optax state over {"policy": params, "value": value_params}.
  rng: raw uint32 key data (checkpointable), split per step.
  """

  step: jax.Array
  params: Any
  value_params: Any
  opt_state: Any
  rng: jax.Array

  def trainables(self) -> dict[str, Any]:
    return {"policy": self.params, "value": self.value_params}


def init_fn(cfg: Any, seed: int, tx: Any):
  """A function () -> fresh TrainState, for `jax.eval_shape` (shapes only)
  or `jax.jit(..., out_shardings=...)` (initialised directly sharded)."""
  from stepjax.train import policy

  def init() -> TrainState:
    params, value_params = policy.init(cfg, seed)
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      value_params=value_params,
      opt_state=tx.init({"policy": params, "value": value_params}),
      rng=jax.random.key_data(jax.random.key(seed)),
    )

  return init
