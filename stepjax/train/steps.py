"""The jitted update steps: pure functions of (state, batch).

Shapes: B completions (P prompts x G samples) in this update, P prompts,
L = T prompt tokens + C completion tokens, V vocab, M image slots per
prompt, I = P * M image slots, N patch rows per image, D hidden. Nothing in
an update is indexed by step: step labels come per token, so a batch's step
counts never change its shapes.

Every per-token array is aligned with `ids_BxL`: entry t describes token t.
The model's logits at t predict token t + 1, so losses use `[:, 1:]` of the
token-aligned arrays against `logits[:, :-1]`.

Batches are typed (`train/batches.py`): the model reads a
`sequences.SequenceBatch` (ids_BxL, mask_BxL, positions_3xBxL,
loss_mask_BxL and the P prompts' image slots, encoded once, each of a
prompt's G rows then reading its features through `image_prompt_I`); SFT
trains on a `batches.SftBatch`, RL on a `batches.UpdateBatch` (the
sequences plus adv_BxL, old_logp_BxL, ref_logp_BxL and the step-value
head's labels).

An RL step builds everything but adv_BxL and ref_logp_BxL before the
update (`train/rollout.py`); `prepare_update` computes both on the device
in one jitted call (the advantages from the `advantages.AdvantageInputs`
of the scored completions, the algorithm picked by name from
`rl.advantages.ALGORITHMS`), then `train_step` runs on the same placed
batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from stepjax import image_slots, sequences
from stepjax.models import language, step_value, vlm
from stepjax.rl import advantages, losses
from stepjax.train import batches
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
  # True: the value loss's gradient also reaches the policy's layers (an
  # auxiliary loss on a shared trunk); False: it trains the head only.
  value_shapes_policy: bool = False
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
    value_shapes_policy=bool(rl.get("value_shapes_policy", False)),
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
      scale_by_std=bool(rl.scale_by_std),
      tau=float(rl.tau),
      penalty=rl.penalty,
      valid_steps=rl.valid_step_advantage,
    ),
  )


@flax.struct.dataclass
class Prepared:
  """What `prepare_update` computes for an update batch (device arrays).

  adv_B: float32 each completion's advantage (before per-token shaping).
  adv_BxL: float32 the per-token advantages (0 on the T prompt columns).
  ref_logp_BxL: float32 the reference policy's log-probs (None unless
    beta > 0).
  """

  adv_B: jax.Array
  adv_BxL: jax.Array
  ref_logp_BxL: jax.Array | None = None

  def apply(self, update: batches.UpdateBatch) -> batches.UpdateBatch:
    """`update` with these advantages and reference log-probs."""
    return update.replace(adv_BxL=self.adv_BxL, ref_logp_BxL=self.ref_logp_BxL)


def prepare_update(
  ref_params,
  update: batches.UpdateBatch,
  inputs: advantages.AdvantageInputs,
  *,
  graphs,
  adv: AdvantageOptions,
  beta: float,
  shared_prompt_len: int = 0,
) -> Prepared:
  """What the RL update needs beyond the host's batch, in one pass.

  The advantages come from `inputs` (B completions of C tokens, which sit
  at the last C columns of `update`'s sequences); with beta > 0 the
  reference log-probs of `update`'s sequences (0 at column 0; with
  `shared_prompt_len` = T the groups share their prompt in the forward and
  the T prompt columns hold 0, see `shared_prompt_forward`).
  """
  adv_B, adv_BxC = advantages.ALGORITHMS.get(adv.algorithm)(
    inputs, adv.group_size, adv.weights_C, adv.options
  )
  b, length = update.seq.ids_BxL.shape
  prompt_len = length - adv_BxC.shape[1]
  adv_BxL = jnp.concatenate(
    [jnp.zeros((b, prompt_len), jnp.float32), adv_BxC.astype(jnp.float32)],
    axis=1,
  )
  ref_BxL = None
  if beta > 0:
    ref, start = sequence_logp(
      graphs, ref_params, update.seq, adv.group_size, shared_prompt_len
    )
    ref_BxL = jnp.concatenate([jnp.zeros((b, start), jnp.float32), ref], axis=1)
  return Prepared(
    adv_B=adv_B.astype(jnp.float32), adv_BxL=adv_BxL, ref_logp_BxL=ref_BxL
  )


def forward(graphs, params, seq: sequences.SequenceBatch, group_size: int):
  """Teacher-forced forward: (logits_BxLxV, hidden_BxLxD).

  The images are encoded once per prompt and repeated for its G rows.
  """
  img_IxMxD, valid_IxM = vlm.encode_images(
    graphs.policy, params, seq.images.pixels_IxNxP, seq.images.vision_meta
  )
  return decode(graphs, params, seq, img_IxMxD, valid_IxM, group_size)


def decode(graphs, params, seq, img_IxMxD, valid_IxM, group_size: int):
  """`forward` from already encoded image slots (the P prompts'); row
  p * G + g reads prompt p's slots, found by `image_prompt_I`."""
  if group_size > 1:
    num_prompts = seq.ids_BxL.shape[0] // group_size
    slots_J, _ = image_slots.group(
      seq.images.image_prompt_I, num_prompts, group_size, xp=jnp
    )
    img_IxMxD = jnp.take(img_IxMxD, slots_J, axis=0)
    valid_IxM = jnp.take(valid_IxM, slots_J, axis=0)
  logits, hidden, _ = vlm.forward(
    graphs.policy,
    params,
    seq.ids_BxL,
    seq.positions_3xBxL,
    seq.mask_BxL,
    img_IxMxD=img_IxMxD,
    img_valid_IxM=valid_IxM,
  )
  return logits, hidden


def shared_prompt_forward(graphs, params, seq, group_size: int, t: int):
  """The policy on the completion columns of G rows per shared prompt:
  (logits_BxCxV, hidden_BxCxD) with C = L - t.

  Each group's prompt (its rows' first t columns, equal by construction:
  `sequences.SequenceBatch`) runs once with the images, its keys and
  values are repeated for the G rows, then the C completion columns of all
  B rows run against them. logits_BxCxV[:, c] predicts the token at column
  t + c (the first from the prompt's last position); hidden_BxCxD[:, c]
  is the hidden state at column t + c. The same function of the
  parameters as `forward` on those columns, at about (P * t + B * C) /
  (B * L) of its cost; gradients from the G rows add up in the shared
  prompt.
  """
  g = group_size
  ids_BxL, mask_BxL, positions = seq.ids_BxL, seq.mask_BxL, seq.positions_3xBxL
  b, length = ids_BxL.shape
  cache = language.init_cache(graphs.cfg, b // g, length)
  prompt_logits, _, cache = vlm.forward(
    graphs.policy, params, ids_BxL[::g, :t], positions[:, ::g, :t],
    mask_BxL[::g, :t], cache=cache, cache_index=0, remat=graphs.cfg.remat,
    **image_slots.model_inputs(seq.images),
  )  # fmt: skip
  cache = jax.tree.map(lambda x: jnp.repeat(x, g, axis=0), cache)
  logits, hidden, _ = vlm.forward(
    graphs.policy, params, ids_BxL[:, t:], positions[:, :, t:],
    mask_BxL[:, t:], cache=cache, cache_index=t, remat=graphs.cfg.remat,
  )  # fmt: skip
  first_Bx1xV = jnp.repeat(prompt_logits[:, -1:], g, axis=0)
  logits = jnp.concatenate([first_Bx1xV, logits[:, :-1]], axis=1)
  return logits, hidden


def _token_view(graphs, params, seq, opts: StepOptions):
  """(logits predicting columns s.., hidden at columns h.., s, h): the
  whole rows (s = 1, h = 0), or with `opts.prompt_len` = t the completion
  columns only (s = h = t), where every trained token lies."""
  g, t = opts.group_size, opts.prompt_len
  if t > 0 and g > 1:
    logits, hidden = shared_prompt_forward(graphs, params, seq, g, t)
    return logits, hidden, t, t
  logits, hidden = forward(graphs, params, seq, g)
  return logits[:, :-1], hidden, 1, 0


def sequence_logp(graphs, params, seq, group_size: int, prompt_len: int = 0):
  """log p(token t | tokens < t) for t >= s of a `sequences.SequenceBatch`:
  (float32[B, L - s], s), with s = 1, or s = prompt_len when each group
  shares its prompt (> 0)."""
  opts = StepOptions(group_size=group_size, prompt_len=prompt_len)
  logits, _, start, _ = _token_view(graphs, params, seq, opts)
  return losses.token_logp(logits, seq.ids_BxL[:, start:]), start


def _value_terms(
  graphs, value_params, hidden, labels, h: int, shapes_policy: bool = False
):
  # By default the head reads the policy's hidden states without moving
  # them: its loss trains the head only, so process labels never reshape
  # the policy. With `shapes_policy` (rl.value_shapes_policy) the loss's
  # gradient flows on into the policy's layers: they learn features that
  # tell valid steps from invalid ones. hidden holds columns h.. of the rows.
  step_id_BxT = labels.step_id_BxL[:, h:]
  if not shapes_policy:
    hidden = jax.lax.stop_gradient(hidden)
  value_logits = step_value.apply(
    graphs.value, value_params, hidden, step_id_BxT
  )
  return losses.step_value_loss(
    value_logits,
    step_id_BxT,
    labels.step_valid_BxL[:, h:],
    labels.label_mask_B,
  )


def _needed(batch, name: str, why: str):
  """The batch's field `name`, which the update reads because `why`."""
  value = getattr(batch, name)
  if value is None:
    raise ValueError(
      f"the update batch has no {name}, which the update reads ({why}); "
      "fill it in (`steps.prepare_update`, `rollout.update_batch`) or "
      "change that setting"
    )
  return value


def rl_loss(trainables, batch: batches.UpdateBatch, graphs, opts: StepOptions):
  seq = batch.seq
  logits, hidden, s, h = _token_view(graphs, trainables["policy"], seq, opts)
  targets = seq.ids_BxL[:, s:]
  mask = seq.loss_mask_BxL[:, s:]
  logp = losses.token_logp(logits, targets)
  ref = old = None
  if opts.beta > 0:
    ref = _needed(batch, "ref_logp_BxL", "rl.beta > 0")[:, s:]
  if opts.use_old_logp:
    old = _needed(batch, "old_logp_BxL", "rl.num_iterations > 1")[:, s:]
  b, length = seq.ids_BxL.shape
  loss, metrics = losses.policy_loss(
    logp,
    _needed(batch, "adv_BxL", "the policy loss")[:, s:],
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
    labels = _needed(batch, "value_labels", "rl.value_loss_weight > 0")
    value_loss, value_metrics = _value_terms(
      graphs, trainables["value"], hidden, labels, h, opts.value_shapes_policy
    )
    loss = loss + opts.value_loss_weight * value_loss
    metrics.update({f"value_{k}": v for k, v in value_metrics.items()})
  metrics["loss"] = loss
  return loss, metrics


def sft_loss(trainables, batch: batches.SftBatch, graphs, opts: StepOptions):
  """Cross-entropy on the gold completion; with `opts.grounding_weight`,
  plus that weight times the grounding readout's loss on the image
  features (metrics keep "loss" the cross-entropy, "objective" the sum)."""
  params, seq = trainables["policy"], batch.seq
  img_IxMxD, valid_IxM = vlm.encode_images(
    graphs.policy, params, seq.images.pixels_IxNxP, seq.images.vision_meta
  )
  logits, _ = decode(graphs, params, seq, img_IxMxD, valid_IxM, 1)
  loss, metrics = losses.sft_loss(
    logits[:, :-1], seq.ids_BxL[:, 1:], seq.loss_mask_BxL[:, 1:]
  )
  if opts.grounding_weight > 0:
    readout_IxF = step_value.grounding_logits(
      graphs.value, trainables["value"], img_IxMxD, valid_IxM
    )
    findings = _needed(batch, "findings_BxF", "sft.grounding_weight > 0")
    g_loss, g_metrics = losses.grounding_loss(
      readout_IxF, findings, _needed(batch, "findings_mask_BxF", "the same")
    )
    metrics.update({f"grounding_{k}": v for k, v in g_metrics.items()})
    loss = loss + opts.grounding_weight * g_loss
    metrics["objective"] = loss
  return loss, metrics


_LOSSES = {"rl": rl_loss, "sft": sft_loss}


def train_step(
  state: state_lib.TrainState,
  batch: batches.UpdateBatch | batches.SftBatch,
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
