"""One-token decode step over a per-layer, heads-major KV cache.

An adapter over the policy's own modules (norms, projections, MLP, lm_head,
rotary helpers), used by the sampler's decode loop instead of
`Qwen25VL.__call__` for speed. The model's cache is `k_LxBxSxGxK`: every
decode step then (1) transposes each layer's keys and values to put the
kv-head axis before the slots for the attention dot products and (2)
re-stacks the L updated layers into a new array, i.e. copies the whole
cache several times per token. Here the cache is a list of L arrays
`k_BxGxSxK` (kept in place by `dynamic_update_slice` inside the loop) and
the attention contracts in that layout directly.

Shapes: B rows, S cache slots, G kv heads, R query heads per kv head,
K head_dim, D hidden, V vocab, L layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stepjax.models import language, layers


def from_model_cache(cache: dict) -> dict:
  """Model cache (k_LxBxSxGxK, ...) -> decode cache (one transpose).

  Returns {"k": [k_BxGxSxK] * L, "v": [...], "mask_BxS": bool}.
  """
  to_heads = lambda x: [jnp.swapaxes(x[i], 1, 2) for i in range(x.shape[0])]
  return {
    "k": to_heads(cache["k_LxBxSxGxK"]),
    "v": to_heads(cache["v_LxBxSxGxK"]),
    "mask_BxS": cache["mask_BxS"],
  }


def _attend(attn, x_BxD, cos_BxK, sin_BxK, k_cache, v_cache, mask_BxS, index):
  """Self-attention of one new token per row; returns (out_BxD, k, v)."""
  q_BxNxK = layers.apply_rotary(attn.q(x_BxD), cos_BxK, sin_BxK)
  k_BxGxK = layers.apply_rotary(attn.k(x_BxD), cos_BxK, sin_BxK)
  v_BxGxK = attn.v(x_BxD)
  start = (0, 0, index, 0)
  k_cache = jax.lax.dynamic_update_slice(
    k_cache, k_BxGxK[:, :, None].astype(k_cache.dtype), start
  )
  v_cache = jax.lax.dynamic_update_slice(
    v_cache, v_BxGxK[:, :, None].astype(v_cache.dtype), start
  )
  b, n, kd = q_BxNxK.shape
  g = k_cache.shape[1]
  q_BxGxRxK = q_BxNxK.reshape(b, g, n // g, kd)
  dtype = attn.dtype
  logits = jnp.einsum("bgrk,bgsk->bgrs", q_BxGxRxK, k_cache.astype(dtype)) * (
    kd**-0.5
  )
  logits = jnp.where(
    mask_BxS[:, None, None], logits, jnp.finfo(logits.dtype).min
  )
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  out = jnp.einsum(
    "bgrs,bgsk->bgrk", probs.astype(dtype), v_cache.astype(dtype)
  )
  return attn.o(out.reshape(b, n, kd)), k_cache, v_cache


def decode_step(model, tok_B, positions_3xBx1, cache: dict, index):
  """Feeds one token per row at slot `index` (traced int32 scalar).

  model: a merged `qwen25vl.Qwen25VL`. positions_3xBx1 as from
  `rope_index.next_positions`. Returns (logits_BxV, new cache).
  """
  dec = model.language
  x_BxD = dec.embed_tokens(tok_B)
  dtype = x_BxD.dtype
  cos, sin = language.mrope_cos_sin(positions_3xBx1, model.cfg.text, dtype)
  cos_BxK, sin_BxK = cos[:, 0], sin[:, 0]
  b = tok_B.shape[0]
  mask_BxS = jax.lax.dynamic_update_slice(
    cache["mask_BxS"], jnp.ones((b, 1), bool), (0, index)
  )
  keys, values = [], []
  for i, layer in enumerate(dec.layers):
    h, k, v = _attend(
      layer.attn, layer.input_norm(x_BxD), cos_BxK, sin_BxK,
      cache["k"][i], cache["v"][i], mask_BxS, index,
    )  # fmt: skip
    x_BxD = x_BxD + h
    x_BxD = x_BxD + layer.mlp(layer.post_attn_norm(x_BxD))
    keys.append(k)
    values.append(v)
  logits_BxV = model.logits(dec.final_norm(x_BxD)[:, None])[:, 0]
  return logits_BxV, {"k": keys, "v": values, "mask_BxS": mask_BxS}
