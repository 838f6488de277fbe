"""Step-value head: P(the reasoning step ending at this token is valid).

B: batch, T: tokens, D: decoder hidden, F: head width.

RMSNorm -> Linear(D, F) -> SiLU -> Linear(F, 1) on the policy's final
hidden state (`hidden_BxTxD` from `vlm.VisionLanguageModel.__call__`), giving
per-token logits `value_logit_BxT`. With `cfg.value_input =
"last+step_mean"` the head also reads, beside each token's hidden state,
the mean hidden state over its step's tokens so far (`step_mean`; at a
step's last token, where its label is read, the whole step): RMSNorm of
each, concatenated, Linear(2D, F). That input needs the tokens' step ids
(`step_id_BxT`, -1 outside steps). Its parameters are a module of their
own, separate from the policy's, so a reference policy carries none; split
it with `nnx.split` and pass both pytrees to the train step. Callers
usually stop gradients into the policy (`jax.lax.stop_gradient(hidden)`)
unless the value loss should shape the policy's features.

With `cfg.grounding_outputs = F > 0` the same module also holds the
grounding readout SFT can train the vision tower through: Linear(E, F) on
every merged image token, then the log-sum-exp over the image's valid
tokens, `grounding_logit_IxF` (finding f is present if some token shows
it). It reads no position, so the tower has to put what a token shows
(which organ, whether it has a lesion) into the token itself, where the
language model, which barely separates image tokens by position, can read
it. (I: images, M: merged tokens per image, E: their width.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from stepjax.models import config as config_lib
from stepjax.models import layers


class StepValueHead(nnx.Module):
  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    d, f = cfg.text.hidden_size, cfg.value_hidden_size
    kw = dict(rngs=rngs, param_dtype=cfg.param_dtype, dtype=cfg.dtype)
    self.norm = layers.RMSNorm(
      d, cfg.text.rms_norm_eps, "embed", cfg.param_dtype, cfg.dtype
    )
    self.reads_step_mean = cfg.value_input == "last+step_mean"
    if self.reads_step_mean:
      self.norm_mean = layers.RMSNorm(
        d, cfg.text.rms_norm_eps, "embed", cfg.param_dtype, cfg.dtype
      )
      d_in = 2 * d
    else:
      d_in = d
    self.fc1 = layers.Dense(
      (d_in,), (f,), ("embed",), ("mlp",), use_bias=True, std=d_in**-0.5, **kw
    )
    self.fc2 = layers.Dense(
      (f,), (1,), ("mlp",), (None,), use_bias=True, std=0.02 * f**-0.5, **kw
    )
    if cfg.grounding_outputs > 0:
      e = cfg.vision.out_hidden_size
      self.grounding = layers.Dense(
        (e,),
        (cfg.grounding_outputs,),
        ("embed",),
        (None,),
        use_bias=True,
        std=e**-0.5,
        **kw,
      )

  def __call__(
    self, hidden_BxTxD: jax.Array, step_id_BxT: jax.Array | None = None
  ) -> jax.Array:
    """value_logit_BxT (float32). `step_id_BxT` (int, -1 outside steps)
    is needed when the head reads the step mean, and ignored otherwise."""
    x = self.norm(hidden_BxTxD)
    if self.reads_step_mean:
      if step_id_BxT is None:
        raise ValueError(
          "this step-value head reads each step's mean hidden state "
          "(model.step_value_input=last+step_mean): pass the tokens' step "
          "ids (step_id_BxT)"
        )
      mean_BxTxD = step_mean(hidden_BxTxD, step_id_BxT)
      x = jnp.concatenate([x, self.norm_mean(mean_BxTxD)], axis=-1)
    h = jax.nn.silu(self.fc1(x))
    return self.fc2(h)[..., 0].astype("float32")

  def grounding_logits(
    self, img_IxMxE: jax.Array, valid_IxM: jax.Array
  ) -> jax.Array:
    """grounding_logit_IxF (float32): log-sum-exp over valid tokens.

    Reads the merged tokens only (the first E features; Qwen3-VL's
    DeepStack levels follow them).
    """
    e = self.grounding.kernel.shape[0]
    per_token_IxMxF = self.grounding(img_IxMxE[..., :e]).astype("float32")
    masked = jnp.where(valid_IxM[..., None], per_token_IxMxF, -jnp.inf)
    return jax.nn.logsumexp(masked, axis=1)


def step_mean(hidden_BxTxD: jax.Array, step_id_BxT: jax.Array) -> jax.Array:
  """mean_BxTxD (float32): at each token of a step, the mean of the hidden
  states of that step's tokens up to and including it (at the step's last
  token: the whole step); zeros outside steps (step id -1).

  A step is a run of equal ids >= 0; a causal prefix mean, so the head
  reads no token after the one it labels. Computed from one cumulative
  sum along T (no step axis).
  """
  ids = jnp.asarray(step_id_BxT)
  t = ids.shape[1]
  in_step_BxT = ids >= 0
  prev_BxT = jnp.concatenate([jnp.full_like(ids[:, :1], -1), ids[:, :-1]], 1)
  pos_T = jnp.arange(t, dtype=jnp.int32)
  starts_BxT = in_step_BxT & (ids != prev_BxT)
  start_BxT = jax.lax.cummax(jnp.where(starts_BxT, pos_T, 0), axis=1)
  h = jnp.where(in_step_BxT[..., None], hidden_BxTxD.astype(jnp.float32), 0.0)
  csum_BxTxD = jnp.cumsum(h, axis=1)
  # before_BxTxD[t] = sum of the tokens before t's step began.
  padded = jnp.concatenate([jnp.zeros_like(h[:, :1]), csum_BxTxD], axis=1)
  before_BxTxD = jnp.take_along_axis(padded, start_BxT[..., None], axis=1)
  count_BxT = (pos_T - start_BxT + 1).astype(jnp.float32)
  mean = (csum_BxTxD - before_BxTxD) / count_BxT[..., None]
  return jnp.where(in_step_BxT[..., None], mean, 0.0)


def create(cfg: config_lib.ModelConfig, seed: int = 0) -> StepValueHead:
  return StepValueHead(cfg, nnx.Rngs(params=seed))


def apply(graphdef, params, hidden_BxTxD, step_id_BxT=None):
  """Functional form for use inside jax.jit."""
  return nnx.merge(graphdef, params)(hidden_BxTxD, step_id_BxT)


def grounding_logits(graphdef, params, img_IxMxE, valid_IxM):
  """Functional form of `StepValueHead.grounding_logits`."""
  return nnx.merge(graphdef, params).grounding_logits(img_IxMxE, valid_IxM)
