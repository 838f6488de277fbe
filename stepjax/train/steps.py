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

An RL step's host side (`train/rollout.py`) builds everything but adv_BxL
and ref_logp_BxL; `prepare_update` computes both on the device in one
jitted call (the advantages from the reward components and step labels in
the batch, the algorithm picked by name from `rl.advantages.ALGORITHMS`),
then `train_step` runs on the same placed batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from stepjax import image_slots
from stepjax.models import language, step_value, vlm
from stepjax.rl import advantages, losses
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
  # RL: the prompt width T of the batch's sequences when each group's G
  # rows share their prompt (`shared_prompt_forward`); 0 = every row is
  # run whole.
  prompt_len: int = 0


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


@dataclasses.dataclass(frozen=True)
class AdvantageOptions:
  """Static settings of the advantages (part of the jit cache key)."""

  algorithm: str = "mrpo"  # a name in rl.advantages.ALGORITHMS
  group_size: int = 1
  weights_C: tuple[float, ...] = ()  # of the batch's rewards_BxC columns
  options: advantages.AlgorithmOptions = advantages.AlgorithmOptions()


def advantage_options(config, weights_C) -> AdvantageOptions:
  """The advantages' options from a job config (rl.*, sampling.group_size)
  and the reward weights (`rollout.reward_weights`)."""
  rl = config.rl
  advantages.ALGORITHMS.get(rl.algorithm)  # a clear error for a bad name
  return AdvantageOptions(
    algorithm=rl.algorithm,
    group_size=config.sampling.group_size,
    weights_C=tuple(float(w) for w in weights_C),
    options=advantages.AlgorithmOptions(
      scale_by_std=bool(rl.scale_by_std), tau=float(rl.tau), penalty=rl.penalty
    ),
  )


def prepare_update(
  ref_params,
  batch,
  *,
  graphs,
  adv: AdvantageOptions,
  prompt_len: int,
  beta: float,
  shared_prompt_len: int = 0,
) -> dict[str, jax.Array]:
  """What the RL update needs beyond the host's batch, in one pass.

  Returns adv_B (per completion), adv_BxL (the algorithm's per-token
  advantages at the completion columns, 0 at the `prompt_len` prompt
  columns) and, when beta > 0, ref_logp_BxL (the reference policy's
  log-prob of each token, 0 at column 0; with `shared_prompt_len` = T the
  groups share their prompt in the forward and the T prompt columns hold
  0, see `shared_prompt_forward`).
  """
  inputs = advantages.AdvantageInputs(
    rewards_BxC=batch["rewards_BxC"],
    answer_reward_B=batch["answer_reward_B"],
    step_id_BxT=batch["step_id_BxL"][:, prompt_len:],
    num_steps_B=batch["num_steps_B"],
    step_valid_BxK=batch["step_valid_BxK"],
    has_labels_B=batch["has_labels_B"],
  )
  adv_B, adv_BxC = advantages.ALGORITHMS.get(adv.algorithm)(
    inputs, adv.group_size, adv.weights_C, adv.options
  )
  b = adv_BxC.shape[0]
  out = {
    "adv_B": adv_B.astype(jnp.float32),
    "adv_BxL": jnp.concatenate(
      [jnp.zeros((b, prompt_len), jnp.float32), adv_BxC.astype(jnp.float32)],
      axis=1,
    ),
  }
  if beta > 0:
    ref, start = sequence_logp(
      graphs, ref_params, batch, adv.group_size, shared_prompt_len
    )
    out["ref_logp_BxL"] = jnp.concatenate(
      [jnp.zeros((b, start), jnp.float32), ref], axis=1
    )
  return out


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


def shared_prompt_forward(graphs, params, batch, group_size: int, t: int):
  """The policy on the completion columns of G rows per shared prompt:
  (logits_BxCxV, hidden_BxCxD) with C = L - t.

  Each group's prompt (its rows' first t columns, equal by construction:
  `batches.sequences`) runs once with the images, its keys and values are
  repeated for the G rows, then the C completion columns of all B rows
  run against them. logits_BxCxV[:, c] predicts the token at column t + c
  (the first from the prompt's last position); hidden_BxCxD[:, c] is the
  hidden state at column t + c. The same function of the parameters as
  `forward` on those columns, at about (P * t + B * C) / (B * L) of its
  cost; gradients from the G rows add up in the shared prompt.
  """
  g = group_size
  ids_BxL, mask_BxL = batch["ids_BxL"], batch["mask_BxL"]
  positions = batch["positions_3xBxL"]
  b, length = ids_BxL.shape
  cache = language.init_cache(graphs.cfg, b // g, length)
  prompt_logits, _, cache = vlm.forward(
    graphs.policy, params, ids_BxL[::g, :t], positions[:, ::g, :t],
    mask_BxL[::g, :t], pixels_IxNxP=batch["pixels_IxNxP"],
    vision_meta=batch["vision_meta"], cache=cache, cache_index=0,
    remat=graphs.cfg.remat,
  )  # fmt: skip
  cache = jax.tree.map(lambda x: jnp.repeat(x, g, axis=0), cache)
  logits, hidden, _ = vlm.forward(
    graphs.policy, params, ids_BxL[:, t:], positions[:, :, t:],
    mask_BxL[:, t:], cache=cache, cache_index=t, remat=graphs.cfg.remat,
  )  # fmt: skip
  first_Bx1xV = jnp.repeat(prompt_logits[:, -1:], g, axis=0)
  logits = jnp.concatenate([first_Bx1xV, logits[:, :-1]], axis=1)
  return logits, hidden


def _token_view(graphs, params, batch, opts: StepOptions):
  """(logits predicting columns s.., hidden at columns h.., s, h): the
  whole rows (s = 1, h = 0), or with `opts.prompt_len` = t the completion
  columns only (s = h = t), where every trained token lies."""
  g, t = opts.group_size, opts.prompt_len
  if t > 0 and g > 1:
    logits, hidden = shared_prompt_forward(graphs, params, batch, g, t)
    return logits, hidden, t, t
  logits, hidden = forward(graphs, params, batch, g)
  return logits[:, :-1], hidden, 1, 0


def sequence_logp(graphs, params, batch, group_size: int, prompt_len: int = 0):
  """log p(token t | tokens < t) for t >= s: (float32[B, L - s], s), with
  s = 1, or s = prompt_len when each group shares its prompt (> 0)."""
  opts = StepOptions(group_size=group_size, prompt_len=prompt_len)
  logits, _, start, _ = _token_view(graphs, params, batch, opts)
  return losses.token_logp(logits, batch["ids_BxL"][:, start:]), start


def _value_terms(graphs, value_params, hidden, batch, h: int):
  # The head reads the policy's hidden states without moving them: its loss
  # trains the head only, so process labels never reshape the policy.
  # hidden holds columns h.. of the rows.
  value_logits = step_value.apply(
    graphs.value, value_params, jax.lax.stop_gradient(hidden)
  )
  return losses.step_value_loss(
    value_logits,
    batch["step_id_BxL"][:, h:],
    batch["step_valid_BxL"][:, h:],
    batch["label_mask_B"],
  )


def rl_loss(trainables, batch, graphs, opts: StepOptions):
  logits, hidden, s, h = _token_view(graphs, trainables["policy"], batch, opts)
  targets = batch["ids_BxL"][:, s:]
  mask = batch["loss_mask_BxL"][:, s:]
  logp = losses.token_logp(logits, targets)
  ref = batch["ref_logp_BxL"][:, s:] if opts.beta > 0 else None
  old = batch["old_logp_BxL"][:, s:] if opts.use_old_logp else None
  b, length = batch["ids_BxL"].shape
  loss, metrics = losses.policy_loss(
    logp,
    batch["adv_BxL"][:, s:],
    mask,
    old_logp_BxT=old,
    ref_logp_BxT=ref,
    eps_low=opts.eps_low,
    eps_high=opts.eps_high,
    beta=opts.beta,
    aggregation=opts.aggregation,
    # "constant" divides by B x (L - 1) whichever columns are computed.
    norm=float(b * (length - 1)),
  )
  _, metrics["entropy"] = losses.entropy_from_logits(
    jax.lax.stop_gradient(logits), mask
  )
  metrics["policy_loss"] = loss
  if opts.train_value_head:
    value_loss, value_metrics = _value_terms(
      graphs, trainables["value"], hidden, batch, h
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
