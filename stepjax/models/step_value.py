"""Step-value head: P(the reasoning step ending at this token is valid).

B: batch, T: tokens, D: decoder hidden, F: head width.

RMSNorm -> Linear(D, F) -> SiLU -> Linear(F, 1) on the policy's final
hidden state (`hidden_BxTxD` from `qwen25vl.Qwen25VL.__call__`), giving
per-token logits `value_logit_BxT`. Its parameters are a module of their
own, separate from the policy's, so a reference policy carries none; split
it with `nnx.split` and pass both pytrees to the train step. Callers
usually stop gradients into the policy (`jax.lax.stop_gradient(hidden)`)
unless the value loss should shape the policy's features.
"""

from __future__ import annotations

import jax
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

  def __call__(self, hidden_BxTxD: jax.Array) -> jax.Array:
    """value_logit_BxT (float32)."""
    h = jax.nn.silu(self.fc1(self.norm(hidden_BxTxD)))
    return self.fc2(h)[..., 0].astype("float32")


def create(cfg: config_lib.ModelConfig, seed: int = 0) -> StepValueHead:
  return StepValueHead(cfg, nnx.Rngs(params=seed))


def apply(graphdef, params, hidden_BxTxD):
  """Functional form for use inside jax.jit."""
  return nnx.merge(graphdef, params)(hidden_BxTxD)
