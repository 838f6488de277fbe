"""The optimizer: AdamW with warm-up, decay, clipping and accumulation."""

from __future__ import annotations

from typing import Any

import jax
import optax

from stepjax.errors import InputError


def learning_rate_schedule(
  peak: float, warmup_steps: int, total_steps: int, kind: str
) -> optax.Schedule:
  """Linear warm-up to `peak`, then cosine / linear decay or constant."""
  warmup_steps = max(int(warmup_steps), 0)
  decay_steps = max(int(total_steps) - warmup_steps, 1)
  if kind == "constant":
    after = optax.constant_schedule(peak)
  elif kind == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=0.1)
  elif kind == "linear":
    after = optax.linear_schedule(peak, peak * 0.1, decay_steps)
  else:
    raise InputError(
      f"--config.optim.schedule={kind!r}: expected cosine, linear or constant"
    )
  if warmup_steps == 0:
    return after
  warmup = optax.linear_schedule(
    peak / max(warmup_steps, 1), peak, warmup_steps
  )
  return optax.join_schedules([warmup, after], [warmup_steps])


def make_optimizer(
  optim_config: Any, learning_rate: float, total_steps: int
) -> optax.GradientTransformation:
  """AdamW (+ global-norm clipping, + gradient accumulation)."""
  schedule = learning_rate_schedule(
    learning_rate,
    optim_config.warmup_steps,
    total_steps,
    optim_config.schedule,
  )
  parts = []
  if optim_config.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_config.grad_clip))
  parts.append(
    optax.adamw(
      schedule,
      b1=optim_config.b1,
      b2=optim_config.b2,
      weight_decay=optim_config.weight_decay,
    )
  )
  tx = optax.chain(*parts)
  if optim_config.grad_accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=optim_config.grad_accum)
  return tx


def sft_optimizer(config: Any) -> optax.GradientTransformation:
  """The SFT phase's optimizer: `optim.*` at `sft.learning_rate`, no
  accumulation; with `sft.freeze_vision` no updates to the vision tower."""
  optim_config = config.optim.copy_and_resolve_references()
  with optim_config.unlocked():
    optim_config.grad_accum = 1
  tx = make_optimizer(
    optim_config, config.sft.learning_rate, max(config.sft.steps, 1)
  )
  return frozen_vision(tx) if config.sft.get("freeze_vision") else tx


def rl_optimizer(config: Any) -> optax.GradientTransformation:
  """The RL phase's optimizer; with accumulation one RL step makes
  `optim.grad_accum` micro-updates. The step-value head learns at
  `rl.value_lr_scale` times the policy's rate. With `rl.freeze_vision` the
  policy's vision tower gets no updates (nor weight decay; it is left out
  of the clipping norm too)."""
  tx = make_optimizer(
    config.optim,
    config.optim.learning_rate,
    max(config.train.steps, 1) * config.optim.grad_accum,
  )
  scale = config.rl.get("value_lr_scale", 1.0)
  if scale != 1.0:
    tx = optax.chain(tx, scale_value_updates(scale))
  return frozen_vision(tx) if config.rl.freeze_vision else tx


def scale_value_updates(scale: float) -> optax.GradientTransformation:
  """Multiplies the step-value head's updates (the "value" subtree of the
  trainables) by `scale`: the head's learning rate is `scale` times the
  policy's, on the same schedule. Stateless."""

  def scale_value(updates, params=None):
    del params
    return {
      **updates,
      "value": jax.tree.map(lambda u: u * scale, updates["value"]),
    }

  return optax.stateless(scale_value)


def frozen_vision(tx: optax.GradientTransformation):
  """`tx` with the policy's vision tower left out: its updates are zeroed
  before (no moments, no share of the clipping norm) and after (no
  decoupled weight decay). Stateless, so the optimizer state keeps the
  structure the checkpoints and shardings expect."""
  return optax.chain(_zero_vision(), tx, _zero_vision())


def is_vision_param(path: tuple) -> bool:
  """True for a path into the policy's vision tower in a
  {"policy": ..., "value": ...} trainables tree."""
  return [getattr(k, "key", None) for k in path[:2]] == ["policy", "visual"]


def _zero_vision() -> optax.GradientTransformation:
  def zero(updates, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
      lambda path, u: jax.numpy.zeros_like(u) if is_vision_param(path) else u,
      updates,
    )

  return optax.stateless(zero)
