"""The jitted update steps: pure functions of (state, batch).

Shapes: B completions (P prompts x G samples) in this update, P prompts,
L = T prompt tokens + C completion tokens, V vocab, M image slots per
prompt, I = P * M image slots, N patch rows per image, D hidden. Nothing in
an update is indexed by step: step labels come per token, so a batch's step
counts never change its shapes.

Every per-token array is aligned with `ids_BxL`: entry t describes token t.
The model's logits at t predict token t + 1, so losses use `[:, 1:]` of the
token-aligned arrays against `logits[:, :-1]`.

Update batch (a dict of arrays):
  ids_BxL, mask_BxL, positions_3xBxL: the full sequences and M-RoPE ids.
  pixels_IxNxP, vision_meta, image_prompt_I: the P prompts' image slots
    and the prompt owning each (`stepjax/image_slots.py`); encoded once,
    each of a prompt's G rows then reads its features.
  loss_mask_BxL: 1 on tokens the loss trains (completion / SFT target).
  RL only: adv_BxL, old_logp_BxL, ref_logp_BxL (when beta > 0),
  step_id_BxL (-1 outside steps), step_valid_BxL (the label of each
  token's step), label_mask_B (1 where step labels train the value head).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from stepjax import image_slots
from stepjax.models import step_value, vlm
from stepjax.rl import losses
from stepjax.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """Static settings of the update (hashable: part of the jit cache key)."""

  group_size: int = 1
  eps_low: float = 0.2
  eps_high: float = 0.2
  beta: float = 0.0
  aggregation: str = "seq_mean"
  use_old_logp: bool = False  # False: one pass, old = stop_gradient(logp)
  value_loss_weight: float = 0.1
  train_value_head: bool = True
  grounding_weight: float = 0.0  # SFT: weight of the grounding readout loss


def options_from_config(config) -> StepOptions:
  """The RL update's options from a job config (rl.*, sampling.group_size)."""
  rl = config.rl
  return StepOptions(
    group_size=config.sampling.group_size,
    eps_low=rl.eps_low,
    eps_high=rl.eps_high,
    beta=rl.beta,
    aggregation=rl.loss_aggregation,
    use_old_logp=rl.num_iterations > 1,
    value_loss_weight=rl.value_loss_weight,
    train_value_head=rl.value_loss_weight > 0,
    grounding_weight=float(config.sft.grounding_weight),
  )


def forward(graphs, params, batch, group_size: int):
  """Teacher-forced forward: (logits_BxLxV, hidden_BxLxD).

  The images are encoded once per prompt and repeated for its G rows.
  """
  img_IxMxD, valid_IxM = vlm.encode_images(
    graphs.policy, params, batch["pixels_IxNxP"], batch["vision_meta"]
  )
  return decode(graphs, params, batch, img_IxMxD, valid_IxM, group_size)


def decode(graphs, params, batch, img_IxMxD, valid_IxM, group_size: int):
  """`forward` from already encoded image slots (the P prompts'); row
  p * G + g reads prompt p's slots, found by `image_prompt_I`."""
  if group_size > 1:
    num_prompts = batch["ids_BxL"].shape[0] // group_size
    slots_J, _ = image_slots.group(
      batch["image_prompt_I"], num_prompts, group_size, xp=jnp
    )
    img_IxMxD = jnp.take(img_IxMxD, slots_J, axis=0)
    valid_IxM = jnp.take(valid_IxM, slots_J, axis=0)
  logits, hidden, _ = vlm.forward(
    graphs.policy,
    params,
    batch["ids_BxL"],
    batch["positions_3xBxL"],
    batch["mask_BxL"],
    img_IxMxD=img_IxMxD,
    img_valid_IxM=valid_IxM,
  )
  return logits, hidden


def sequence_logp(graphs, params, batch, group_size: int):
  """log p(token t | tokens < t) for t >= 1: float32[B, L-1]."""
  logits, _ = forward(graphs, params, batch, group_size)
  return losses.token_logp(logits[:, :-1], batch["ids_BxL"][:, 1:])


def _value_terms(graphs, value_params, hidden, batch):
  # The head reads the policy's hidden states without moving them: its loss
  # trains the head only, so process labels never reshape the policy.
  value_logits = step_value.apply(
    graphs.value, value_params, jax.lax.stop_gradient(hidden)
  )
  return losses.step_value_loss(
    value_logits,
    batch["step_id_BxL"],
    batch["step_valid_BxL"],
    batch["label_mask_B"],
  )


def rl_loss(trainables, batch, graphs, opts: StepOptions):
  logits, hidden = forward(graphs, trainables["policy"], batch, opts.group_size)
  targets = batch["ids_BxL"][:, 1:]
  mask = batch["loss_mask_BxL"][:, 1:]
  logp = losses.token_logp(logits[:, :-1], targets)
  ref = batch["ref_logp_BxL"][:, 1:] if opts.beta > 0 else None
  old = batch["old_logp_BxL"][:, 1:] if opts.use_old_logp else None
  loss, metrics = losses.policy_loss(
    logp,
    batch["adv_BxL"][:, 1:],
    mask,
    old_logp_BxT=old,
    ref_logp_BxT=ref,
    eps_low=opts.eps_low,
    eps_high=opts.eps_high,
    beta=opts.beta,
    aggregation=opts.aggregation,
  )
  _, metrics["entropy"] = losses.entropy_from_logits(
    jax.lax.stop_gradient(logits[:, :-1]), mask
  )
  metrics["policy_loss"] = loss
  if opts.train_value_head:
    value_loss, value_metrics = _value_terms(
      graphs, trainables["value"], hidden, batch
    )
    loss = loss + opts.value_loss_weight * value_loss
    metrics.update({f"value_{k}": v for k, v in value_metrics.items()})
  metrics["loss"] = loss
  return loss, metrics


def sft_loss(trainables, batch, graphs, opts: StepOptions):
  """Cross-entropy on the gold completion; with `opts.grounding_weight`,
  plus that weight times the grounding readout's loss on the image
  features (metrics keep "loss" the cross-entropy, "objective" the sum)."""
  params = trainables["policy"]
  img_IxMxD, valid_IxM = vlm.encode_images(
    graphs.policy, params, batch["pixels_IxNxP"], batch["vision_meta"]
  )
  logits, _ = decode(graphs, params, batch, img_IxMxD, valid_IxM, 1)
  loss, metrics = losses.sft_loss(
    logits[:, :-1], batch["ids_BxL"][:, 1:], batch["loss_mask_BxL"][:, 1:]
  )
  if opts.grounding_weight > 0:
    readout_IxF = step_value.grounding_logits(
      graphs.value, trainables["value"], img_IxMxD, valid_IxM
    )
    g_loss, g_metrics = losses.grounding_loss(
      readout_IxF, batch["findings_BxF"], batch["findings_mask_BxF"]
    )
    metrics.update({f"grounding_{k}": v for k, v in g_metrics.items()})
    loss = loss + opts.grounding_weight * g_loss
    metrics["objective"] = loss
  return loss, metrics


_LOSSES = {"rl": rl_loss, "sft": sft_loss}


def train_step(
  state: state_lib.TrainState,
  batch: dict[str, Any],
  *,
  graphs: Any,
  tx: optax.GradientTransformation,
  opts: StepOptions,
  kind: str,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One optimizer (micro-)step on `batch`; `kind` is "rl" or "sft"."""
  loss_fn = _LOSSES[kind]
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, metrics), grads = grad_fn(state.trainables(), batch, graphs, opts)
  updates, opt_state = tx.update(grads, state.opt_state, state.trainables())
  new = optax.apply_updates(state.trainables(), updates)
  metrics["grad_norm"] = optax.tree.norm(grads["policy"])
  state = state.replace(
    step=state.step + 1,
    params=new["policy"],
    value_params=new["value"],
    opt_state=opt_state,
  )
  return state, metrics
