"""Step-value head: P(the reasoning step ending at this token is valid).

B: batch, T: tokens, D: decoder hidden, F: head width.

RMSNorm -> Linear(D, F) -> SiLU -> Linear(F, 1) on the policy's final
hidden state (`hidden_BxTxD` from `vlm.VisionLanguageModel.__call__`), giving
per-token logits `value_logit_BxT`. Its parameters are a module of their
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
    self.fc1 = layers.Dense(
      (d,), (f,), ("embed",), ("mlp",), use_bias=True, std=d**-0.5, **kw
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

  def __call__(self, hidden_BxTxD: jax.Array) -> jax.Array:
    """value_logit_BxT (float32)."""
    h = jax.nn.silu(self.fc1(self.norm(hidden_BxTxD)))
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


def create(cfg: config_lib.ModelConfig, seed: int = 0) -> StepValueHead:
  return StepValueHead(cfg, nnx.Rngs(params=seed))


def apply(graphdef, params, hidden_BxTxD):
  """Functional form for use inside jax.jit."""
  return nnx.merge(graphdef, params)(hidden_BxTxD)


def grounding_logits(graphdef, params, img_IxMxE, valid_IxM):
  """Functional form of `StepValueHead.grounding_logits`."""
  return nnx.merge(graphdef, params).grounding_logits(img_IxMxE, valid_IxM)
