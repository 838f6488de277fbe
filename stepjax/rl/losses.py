"""Losses: PPO-clip policy loss with k3 KL, entropy, SFT, step-value BCE.

Pure `jnp` functions, jit- and grad-safe. Each loss returns
`(loss, metrics)` with scalar metrics for logging. The token aggregation is
chosen by name from `AGGREGATIONS` (`rl.loss_aggregation`).

Shapes: B completions, T completion tokens, V vocabulary, K_pad step slots
(at least the largest step count). `mask_BxT` is 1 on real completion
tokens, 0 on padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stepjax.rl import registry

AGGREGATIONS = registry.Registry("loss aggregation", "rl.loss_aggregation")


@AGGREGATIONS.register("seq_mean")
def seq_mean(
  x_BxT: jax.Array, mask_BxT: jax.Array, norm: float | None = None
) -> jax.Array:
  """Masked mean over each sequence's tokens, then mean over sequences.

  As the reference code. Sequences with no tokens contribute 0 (and still
  count in the batch mean). `norm` is unused.
  """
  del norm
  m = mask_BxT.astype(x_BxT.dtype)
  per_seq_B = jnp.sum(x_BxT * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
  return jnp.mean(per_seq_B)


@AGGREGATIONS.register("token_mean")
def token_mean(
  x_BxT: jax.Array, mask_BxT: jax.Array, norm: float | None = None
) -> jax.Array:
  """Masked mean over all tokens of the batch. `norm` is unused."""
  del norm
  m = mask_BxT.astype(x_BxT.dtype)
  return jnp.sum(x_BxT * m) / jnp.maximum(jnp.sum(m), 1.0)


@AGGREGATIONS.register("constant")
def constant(
  x_BxT: jax.Array, mask_BxT: jax.Array, norm: float | None = None
) -> jax.Array:
  """Masked sum divided by a constant `norm` (default B * T)."""
  m = mask_BxT.astype(x_BxT.dtype)
  if norm is None:
    norm = x_BxT.shape[0] * x_BxT.shape[1]
  return jnp.sum(x_BxT * m) / norm


def _as_float(x) -> jax.Array:
  """A float array; float32 unless already floating (float64 under x64)."""
  x = jnp.asarray(x)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _masked_mean(x_BxT: jax.Array, m_BxT: jax.Array) -> jax.Array:
  return jnp.sum(x_BxT * m_BxT) / jnp.maximum(jnp.sum(m_BxT), 1.0)


def k3_kl(logp_BxT: jax.Array, ref_logp_BxT: jax.Array) -> jax.Array:
  """k3 estimator of KL(policy || ref): exp(d) - d - 1, d = ref - logp."""
  d = ref_logp_BxT - logp_BxT
  return jnp.exp(d) - d - 1.0


def policy_loss(
  logp_BxT: jax.Array,
  adv_BxT: jax.Array,
  mask_BxT: jax.Array,
  old_logp_BxT: jax.Array | None = None,
  ref_logp_BxT: jax.Array | None = None,
  eps_low: float = 0.2,
  eps_high: float = 0.2,
  beta: float = 0.04,
  aggregation: str = "seq_mean",
  norm: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO-clip objective with per-token advantages plus beta * k3 KL.

  ratio = exp(logp - logp_old); loss_t = -min(ratio A_t, clip(ratio,
  1 - eps_low, 1 + eps_high) A_t) + beta KL_t, aggregated over `mask_BxT`.

  Args:
    logp_BxT: float[B, T] log-probs of the sampled tokens under the policy
      (the differentiated input).
    adv_BxT: float[B, T] per-token advantages.
    mask_BxT: {0,1}[B, T] completion-token mask.
    old_logp_BxT: float[B, T] log-probs at sampling time; None means one
      optimisation pass (num_iterations = 1): stop_gradient(logp).
    ref_logp_BxT: float[B, T] reference-model log-probs; None skips the KL.
    eps_low, eps_high: clip range (rl.eps_low, rl.eps_high).
    beta: KL weight (rl.beta); a Python 0 skips the KL term.
    aggregation: name in `AGGREGATIONS` (rl.loss_aggregation); static
      under jit, as are eps_low, eps_high, beta and norm when closed over.
    norm: the constant normaliser for "constant" (default B * T).

  Returns:
    (scalar loss, metrics): pg_loss, kl (masked token mean), ratio_mean,
    ratio_max, clip_frac_low, clip_frac_high, clip_frac, adv_mean, tokens.
  """
  agg = AGGREGATIONS.get(aggregation)
  logp_BxT = _as_float(logp_BxT)
  if logp_BxT.dtype in (jnp.bfloat16, jnp.float16):
    logp_BxT = logp_BxT.astype(jnp.float32)
  adv_BxT = _as_float(adv_BxT).astype(logp_BxT.dtype)
  m = jnp.asarray(mask_BxT).astype(logp_BxT.dtype)
  if old_logp_BxT is None:
    old_logp_BxT = jax.lax.stop_gradient(logp_BxT)
  ratio = jnp.exp(logp_BxT - jnp.asarray(old_logp_BxT).astype(logp_BxT.dtype))
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  per_token = -jnp.minimum(ratio * adv_BxT, clipped * adv_BxT)
  pg_loss = agg(per_token, m, norm)
  loss = pg_loss
  metrics = {"pg_loss": pg_loss}
  skip_kl = ref_logp_BxT is None or (
    isinstance(beta, int | float) and beta == 0
  )
  if not skip_kl:
    kl = k3_kl(logp_BxT, jnp.asarray(ref_logp_BxT).astype(logp_BxT.dtype))
    loss = agg(per_token + beta * kl, m, norm)
    metrics["kl"] = _masked_mean(kl, m)
  # The clip is active (zero gradient) below 1 - eps_low for A < 0 and above
  # 1 + eps_high for A > 0.
  low = ((ratio < 1.0 - eps_low) & (adv_BxT < 0)).astype(m.dtype)
  high = ((ratio > 1.0 + eps_high) & (adv_BxT > 0)).astype(m.dtype)
  metrics.update(
    loss=loss,
    ratio_mean=_masked_mean(ratio, m),
    ratio_max=jnp.max(jnp.where(m > 0, ratio, 0.0)),
    clip_frac_low=_masked_mean(low, m),
    clip_frac_high=_masked_mean(high, m),
    clip_frac=_masked_mean(low + high, m),
    adv_mean=_masked_mean(adv_BxT, m),
    tokens=jnp.sum(m),
  )
  return loss, metrics


def entropy_from_logits(
  logits_BxTxV: jax.Array, mask_BxT: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Per-token entropy of softmax(logits), for logging.

  Returns:
    (entropy float32[B, T], masked mean entropy scalar).
  """
  logits = logits_BxTxV.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  p = jnp.exp(logp)
  # where(): masked-out (-inf) logits would give 0 * -inf = nan.
  ent_BxT = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
  if mask_BxT is None:
    return ent_BxT, jnp.mean(ent_BxT)
  return ent_BxT, _masked_mean(ent_BxT, mask_BxT.astype(jnp.float32))


def token_logp(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """log softmax(logits)[target] per token: float32[B, T]."""
  logp = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, targets_BxT[..., None], axis=-1)[..., 0]


def sft_loss(
  logits_BxTxV: jax.Array,
  targets_BxT: jax.Array,
  mask_BxT: jax.Array,
  aggregation: str = "token_mean",
  norm: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy on the target tokens (mask 1), aggregated by name.

  Args:
    logits_BxTxV: float[B, T, V] logits predicting `targets_BxT`.
    targets_BxT: int[B, T] target token ids.
    mask_BxT: {0,1}[B, T] which targets count.

  Returns:
    (scalar loss, metrics: loss, accuracy, tokens).
  """
  m = mask_BxT.astype(jnp.float32)
  nll_BxT = -token_logp(logits_BxTxV, targets_BxT)
  loss = AGGREGATIONS.get(aggregation)(nll_BxT, m, norm)
  correct = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT).astype(
    jnp.float32
  )
  return loss, {
    "loss": loss,
    "accuracy": _masked_mean(correct, m),
    "tokens": jnp.sum(m),
  }


def step_end_mask(step_id_BxT: jax.Array) -> jax.Array:
  """1 on the last token of each step (the next token has another id).

  Args:
    step_id_BxT: int[B, T], step index per token, -1 outside steps.

  Returns:
    bool[B, T].
  """
  nxt = jnp.concatenate(
    [step_id_BxT[:, 1:], jnp.full_like(step_id_BxT[:, :1], -1)], axis=1
  )
  return (step_id_BxT >= 0) & (nxt != step_id_BxT)


def step_logits(
  value_logits_BxT: jax.Array, step_id_BxT: jax.Array, k_pad: int
) -> jax.Array:
  """Each step's value logit, read at its last token: float32[B, K_pad].

  Slots past a completion's K get 0. `k_pad` must be at least the largest
  K: a step with no slot is dropped (never folded into another slot).
  """
  b, t = step_id_BxT.shape
  end_BxT = step_end_mask(step_id_BxT) & (step_id_BxT < k_pad)
  # Non-end tokens scatter into a dump column k_pad, dropped afterwards.
  col_BxT = jnp.where(end_BxT, step_id_BxT, k_pad)
  rows_BxT = jnp.broadcast_to(jnp.arange(b)[:, None], (b, t))
  out = jnp.zeros((b, k_pad + 1), jnp.float32)
  out = out.at[rows_BxT, col_BxT].set(value_logits_BxT.astype(jnp.float32))
  return out[:, :k_pad]


def grounding_loss(
  logits_IxF: jax.Array, labels_IxF: jax.Array, mask_IxF: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """BCE of the grounding readout against per-image findings labels.

  Args:
    logits_IxF: float[I, F] readout logits (finding f present in image i).
    labels_IxF: {0,1}[I, F] the truth.
    mask_IxF: {0,1}[I, F] which labels exist (an organ not in the scan,
      or an image without findings labels, counts for nothing).

  Returns:
    (scalar loss: mean over labelled pairs, metrics: loss, accuracy).
  """
  x = logits_IxF.astype(jnp.float32)
  y = jnp.asarray(labels_IxF, jnp.float32)
  m = jnp.asarray(mask_IxF, jnp.float32)
  loss = _masked_mean(jax.nn.softplus(x) - x * y, m)
  correct = ((x >= 0).astype(jnp.float32) == y).astype(jnp.float32)
  return loss, {"loss": loss, "accuracy": _masked_mean(correct, m)}


def step_value_loss(
  value_logits_BxT: jax.Array,
  step_id_BxT: jax.Array,
  step_valid_BxT: jax.Array,
  label_mask_B: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """BCE of the step-value head at step-end tokens against step labels.

  The last token of step k carries that step's label; all other tokens are
  masked. Mean over labelled step ends in the batch. Labels come per token
  (`rl.process.token_labels`), so no step-count axis reaches the update.

  Args:
    value_logits_BxT: float[B, T] value-head logits per token.
    step_id_BxT: int[B, T] step index per token, -1 outside steps.
    step_valid_BxT: {0,1}[B, T] the label of each token's step.
    label_mask_B: optional {0,1}[B]: which completions have labels (e.g.
      the ones the judge labelled in hybrid mode).

  Returns:
    (scalar loss, metrics: loss, accuracy, prob_mean, num_labels).
  """
  x = value_logits_BxT.astype(jnp.float32)
  y = jnp.asarray(step_valid_BxT).astype(jnp.float32)
  m = step_end_mask(step_id_BxT).astype(jnp.float32)
  if label_mask_B is not None:
    m = m * jnp.asarray(label_mask_B, jnp.float32)[:, None]
  bce = jax.nn.softplus(x) - x * y  # = -y log s(x) - (1-y) log(1-s(x))
  loss = _masked_mean(bce, m)
  correct = ((x >= 0).astype(jnp.float32) == y).astype(jnp.float32)
  return loss, {
    "loss": loss,
    "accuracy": _masked_mean(correct, m),
    "prob_mean": _masked_mean(jax.nn.sigmoid(x), m),
    "num_labels": jnp.sum(m),
  }
