"""Advantages: group-relative estimators and MRPO's step-aware shaping.

Pure `jnp` functions, jit- and grad-safe, chosen by name from registries:
`ESTIMATORS` (grpo, grpo_no_std, gdpo: per-completion advantages),
`PENALTIES` (`rl.penalty`: exp, exp_rounded, linear), `VALID_STEP_RULES`
(`rl.valid_step_advantage`: abs, keep) and `ALGORITHMS`
(`rl.algorithm`: an estimator and how its advantage is laid over the
tokens; "mrpo" is grpo's advantages reshaped per step by `mrpo_shape`,
the others give every token its completion's advantage). See
MRPO_SPEC.md, "Advantages". Every estimator is called as
`fn(rewards_BxC, group_size, weights_C, scale_by_std=..., eps=...) ->
adv_B`; every algorithm as `fn(inputs: AdvantageInputs, group_size,
weights_C, opts: AlgorithmOptions) -> (adv_B, adv_BxT)`; `group_size`,
`weights_C` (a tuple) and `opts` are static under jit.

Shapes: B completions in the batch, made of B / G groups of G consecutive
completions of one prompt; C reward components; T completion tokens; K_pad
the padded number of steps (K, the real count, is per completion).
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp

from stepjax.rl import registry

ESTIMATORS = registry.Registry("advantage estimator", "rl.algorithm")
PENALTIES = registry.Registry("step penalty schedule", "rl.penalty")
VALID_STEP_RULES = registry.Registry(
  "valid-step advantage", "rl.valid_step_advantage"
)
ALGORITHMS = registry.Registry("RL algorithm", "rl.algorithm")

EPS = 1e-4  # the spec's std epsilon


def _as_float(x) -> jax.Array:
  """A float array; float32 unless already floating (float64 under x64)."""
  x = jnp.asarray(x)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _grouped(x_B: jax.Array, group_size: int) -> jax.Array:
  """Reshapes B (or BxC) to (B/G)xG(xC); B must be a multiple of G."""
  b = x_B.shape[0]
  if group_size < 1 or b % group_size:
    raise ValueError(
      f"batch of {b} completions is not a whole number of groups of "
      f"{group_size} (sampling.group_size); make the batch a multiple of G"
    )
  return x_B.reshape((b // group_size, group_size) + x_B.shape[1:])


def _bessel_std(x: jax.Array, axis: int) -> jax.Array:
  """Std with Bessel's correction; 0 when the axis holds one element."""
  n = x.shape[axis]
  if n < 2:
    return jnp.zeros_like(jnp.mean(x, axis=axis, keepdims=True))
  return jnp.std(x, axis=axis, ddof=1, keepdims=True)


def group_normalise(
  rewards_B: jax.Array,
  group_size: int,
  scale_by_std: bool = True,
  eps: float = EPS,
) -> jax.Array:
  """(R - group mean) / (group std + eps), std with Bessel's correction.

  Args:
    rewards_B: float[B], groups of `group_size` consecutive completions.
    group_size: G.
    scale_by_std: False gives R - group mean (the no-std variant).
    eps: added to the std.

  Returns:
    float32[B] advantages.
  """
  r_NxG = _grouped(_as_float(rewards_B), group_size)
  centred = r_NxG - jnp.mean(r_NxG, axis=1, keepdims=True)
  if scale_by_std:
    centred = centred / (_bessel_std(r_NxG, axis=1) + eps)
  return centred.reshape(rewards_B.shape)


def _weighted_sum(rewards_BxC: jax.Array, weights_C) -> jax.Array:
  rewards_BxC = _as_float(rewards_BxC)
  if rewards_BxC.ndim == 1:
    rewards_BxC = rewards_BxC[:, None]
  if weights_C is None:
    weights_C = jnp.ones(rewards_BxC.shape[1], rewards_BxC.dtype)
  return rewards_BxC, jnp.asarray(weights_C, rewards_BxC.dtype)


@ESTIMATORS.register("grpo")
def grpo(
  rewards_BxC: jax.Array,
  group_size: int,
  weights_C: jax.Array | None = None,
  scale_by_std: bool = True,
  eps: float = EPS,
) -> jax.Array:
  """GRPO: the weighted reward sum, normalised within each group.

  Args:
    rewards_BxC: float[B, C] reward components (or float[B], one reward).
    group_size: G.
    weights_C: float[C] weights of the components (default all 1).
    scale_by_std: divide by the group std (+ eps); False = no-std variant.
    eps: the std epsilon (spec: 1e-4).

  Returns:
    float[B] per-completion advantages A_i (float32; float64 in x64).
  """
  r_BxC, w_C = _weighted_sum(rewards_BxC, weights_C)
  return group_normalise(r_BxC @ w_C, group_size, scale_by_std, eps)


@ESTIMATORS.register("grpo_no_std")
def grpo_no_std(
  rewards_BxC: jax.Array,
  group_size: int,
  weights_C: jax.Array | None = None,
  scale_by_std: bool = False,
  eps: float = EPS,
) -> jax.Array:
  """GRPO without the std division: R - group mean, float[B].

  Same signature as the other estimators; `scale_by_std` is ignored.
  """
  del scale_by_std
  return grpo(rewards_BxC, group_size, weights_C, scale_by_std=False, eps=eps)


@ESTIMATORS.register("gdpo")
def gdpo(
  rewards_BxC: jax.Array,
  group_size: int,
  weights_C: jax.Array | None = None,
  scale_by_std: bool = True,
  eps: float = EPS,
) -> jax.Array:
  """GDPO: each component normalised in its group, summed, batch-normalised.

  Each reward column is (r - group mean) / (group std + eps); the weighted
  sum over columns is then (x - batch mean) / (batch std + eps). All stds use
  Bessel's correction.

  Args:
    rewards_BxC: float[B, C] reward components.
    group_size: G.
    weights_C: float[C] (default all 1).
    scale_by_std: False drops the within-group std division.
    eps: std epsilon.

  Returns:
    float32[B] advantages.
  """
  r_BxC, w_C = _weighted_sum(rewards_BxC, weights_C)
  r_NxGxC = _grouped(r_BxC, group_size)
  centred = r_NxGxC - jnp.mean(r_NxGxC, axis=1, keepdims=True)
  if scale_by_std:
    centred = centred / (_bessel_std(r_NxGxC, axis=1) + eps)
  summed_B = centred.reshape(r_BxC.shape) @ w_C
  batch_std = _bessel_std(summed_B, axis=0)
  return (summed_B - jnp.mean(summed_B)) / (batch_std + eps)


def get_estimator(name: str):
  """The estimator for `rl.algorithm`; "mrpo" uses "grpo" then shaping."""
  return ESTIMATORS.get("grpo" if name == "mrpo" else name)


# Penalty schedules: multiplier m(k, K) >= 1 of -|A| for an invalid step k
# (1-based) of K; m(1, K) = e and m(K, K) = 1 for the exp schedules.


def _position(k: jax.Array, num_steps: jax.Array) -> jax.Array:
  """(k - 1) / (K - 1), taken as 0 when K <= 1."""
  k = _as_float(k)
  denom = num_steps.astype(k.dtype) - 1.0
  return jnp.where(denom > 0, (k - 1.0) / jnp.where(denom > 0, denom, 1.0), 0.0)


@PENALTIES.register("exp")
def exp_penalty(k: jax.Array, num_steps: jax.Array) -> jax.Array:
  """exp(1 - (k-1)/(K-1)) for K > 1, 1 for K = 1 (the spec)."""
  mult = jnp.exp(1.0 - _position(k, num_steps))
  return jnp.where(num_steps > 1, mult, 1.0)


@PENALTIES.register("exp_rounded")
def exp_rounded_penalty(k: jax.Array, num_steps: jax.Array) -> jax.Array:
  """As "exp", rounded to 2 decimals like the reference code."""
  return jnp.round(exp_penalty(k, num_steps) * 100.0) / 100.0


@PENALTIES.register("linear")
def linear_penalty(k: jax.Array, num_steps: jax.Array) -> jax.Array:
  """Linear from e (first step) to 1 (last step); 1 for K = 1."""
  mult = 1.0 + (math.e - 1.0) * (1.0 - _position(k, num_steps))
  return jnp.where(num_steps > 1, mult, 1.0)


# What a valid step of a shaped completion (R_ans <= tau) gets: float[B]
# per-completion advantages -> float[B].


@VALID_STEP_RULES.register("abs")
def valid_step_abs(adv_B: jax.Array) -> jax.Array:
  """+|A_i|: a valid step is rewarded whatever the answer (the spec)."""
  return jnp.abs(adv_B)


@VALID_STEP_RULES.register("keep")
def valid_step_keep(adv_B: jax.Array) -> jax.Array:
  """A_i: a valid step keeps its completion's outcome advantage, so only
  the invalid steps are reshaped (beyond the spec: an ablation of how much
  of MRPO's effect comes from rewarding valid steps of wrong answers)."""
  return adv_B


def broadcast(adv_B: jax.Array, num_tokens: int) -> jax.Array:
  """Every token gets its completion's advantage: float32[B] -> [B, T]."""
  adv_B = _as_float(adv_B)
  return jnp.broadcast_to(adv_B[:, None], (adv_B.shape[0], num_tokens))


def mrpo_shape(
  adv_B: jax.Array,
  answer_reward_B: jax.Array,
  step_id_BxT: jax.Array,
  num_steps_B: jax.Array,
  step_valid_BxK: jax.Array,
  tau: float = 0.6,
  penalty: str = "exp",
  has_labels_B: jax.Array | None = None,
  valid_steps: str = "abs",
) -> jax.Array:
  """MRPO's step-aware per-token advantages.

  For completion i with R_ans_i > tau, or without step labels, every token
  keeps A_i. Otherwise a token of step k (1-based, of K) gets +|A_i| when the
  step is valid (A_i with valid_steps="keep") and -m(k, K) * |A_i| when
  invalid, m from `penalty` (spec: exp(1 - (k-1)/(K-1)), 1 when K = 1).
  Tokens in no step (id -1: tags, answer, padding) and tokens of a step
  whose label is -1 (unlabelled: the step-value head abstained,
  `rl.value_min_confidence`) keep A_i.

  Args:
    adv_B: float[B] per-completion advantages A_i.
    answer_reward_B: float[B] answer rewards R_ans_i.
    step_id_BxT: int[B, T], 0-based step index of each token, -1 outside.
    num_steps_B: int[B] K per completion.
    step_valid_BxK: {-1,0,1}[B, K_pad] step labels (-1: unlabelled),
      padded past K; K_pad must exceed every step id (it is at least the
      batch's largest K).
    tau: answer-reward threshold (rl.tau).
    penalty: schedule name (rl.penalty), see `PENALTIES`; static under jit.
    has_labels_B: optional {0,1}[B]; 0 = no process labels for that
      completion (judge fallback "skip"), shaping is off for it.
    valid_steps: what a valid step gets (rl.valid_step_advantage), see
      `VALID_STEP_RULES`; static under jit.

  Returns:
    float32[B, T] per-token advantages.
  """
  schedule = PENALTIES.get(penalty)
  valid_rule = VALID_STEP_RULES.get(valid_steps)
  adv_B = _as_float(adv_B)
  step_id_BxT = jnp.asarray(step_id_BxT, jnp.int32)
  num_steps_B = jnp.asarray(num_steps_B, jnp.int32)
  k_pad = step_valid_BxK.shape[1]
  in_step_BxT = step_id_BxT >= 0
  if k_pad == 0:
    return broadcast(adv_B, step_id_BxT.shape[1])
  idx_BxT = jnp.clip(step_id_BxT, 0, k_pad - 1)
  valid_BxT = jnp.take_along_axis(jnp.asarray(step_valid_BxK), idx_BxT, axis=1)
  mult_BxT = schedule((idx_BxT + 1).astype(adv_B.dtype), num_steps_B[:, None])
  mag_Bx1 = jnp.abs(adv_B)[:, None]
  valid_adv_Bx1 = valid_rule(adv_B)[:, None]
  shaped_BxT = jnp.where(valid_BxT > 0, valid_adv_Bx1, -mult_BxT * mag_Bx1)
  shape_B = jnp.asarray(answer_reward_B) <= tau
  if has_labels_B is not None:
    shape_B = shape_B & (jnp.asarray(has_labels_B) > 0)
  use_BxT = shape_B[:, None] & in_step_BxT & (valid_BxT >= 0)
  return jnp.where(use_BxT, shaped_BxT, adv_B[:, None])


# Algorithms: per-completion advantages and their per-token layout.


@flax.struct.dataclass
class AdvantageInputs:
  """What an algorithm's advantages are computed from (B completions).

  rewards_BxC: float32 reward components (columns in `weights_C`'s order).
  answer_reward_B: float32 R_ans, the answer component (MRPO's tau test).
  step_id_BxT: int32 0-based step of each completion token, -1 outside.
  num_steps_B: int32 K, the true step count of each completion.
  step_valid_BxK: int32 {-1,0,1} step labels, K_pad slots (past K: 0;
    -1: a step left unshaped, `process.shaping_mask`).
  has_labels_B: int32 {0,1}; 0 = no process labels (no shaping).
  """

  rewards_BxC: jax.Array
  answer_reward_B: jax.Array
  step_id_BxT: jax.Array
  num_steps_B: jax.Array
  step_valid_BxK: jax.Array
  has_labels_B: jax.Array


@dataclasses.dataclass(frozen=True)
class AlgorithmOptions:
  """An algorithm's static settings (rl.scale_by_std, rl.tau, rl.penalty,
  rl.valid_step_advantage)."""

  scale_by_std: bool = True
  tau: float = 0.6
  penalty: str = "exp"
  valid_steps: str = "abs"


def _unshaped(estimator_name: str):
  """An algorithm that gives every token its completion's advantage."""

  def algorithm(inputs, group_size, weights_C=None, opts=AlgorithmOptions()):
    adv_B = ESTIMATORS.get(estimator_name)(
      inputs.rewards_BxC, group_size, weights_C, scale_by_std=opts.scale_by_std
    )
    return adv_B, broadcast(adv_B, inputs.step_id_BxT.shape[1])

  algorithm.__name__ = estimator_name
  algorithm.__doc__ = f"{estimator_name} advantages, the same on every token."
  return algorithm


for _name in ("grpo", "grpo_no_std", "gdpo"):
  ALGORITHMS.register(_name)(_unshaped(_name))


@ALGORITHMS.register("mrpo")
def mrpo(
  inputs: AdvantageInputs,
  group_size: int,
  weights_C=None,
  opts: AlgorithmOptions = AlgorithmOptions(),
) -> tuple[jax.Array, jax.Array]:
  """MRPO: grpo's advantages, reshaped per step (`mrpo_shape`)."""
  adv_B = grpo(
    inputs.rewards_BxC, group_size, weights_C, scale_by_std=opts.scale_by_std
  )
  adv_BxT = mrpo_shape(
    adv_B,
    inputs.answer_reward_B,
    inputs.step_id_BxT,
    inputs.num_steps_B,
    inputs.step_valid_BxK,
    tau=opts.tau,
    penalty=opts.penalty,
    has_labels_B=inputs.has_labels_B,
    valid_steps=opts.valid_steps,
  )
  return adv_B, adv_BxT
