"""Qwen2 / Qwen3 decoder with M-RoPE and a preallocated KV cache.

Qwen3 (`text.qk_norm`): RMSNorm on each query and key head before the
rotary, no projection biases, and DeepStack: visual features added to the
hidden state at the image tokens after each of the first S layers
(`deepstack` in `Decoder.__call__`).

B: batch, T: new tokens this call, S: cache length, D: hidden, L: layers,
N: query heads, G: kv heads, K: head_dim, V: vocab.

Cache (a dict pytree, see `init_cache`):
  layers: a tuple of L dicts, one per decoder layer, each with
    k_BxGxSxK, v_BxGxSxK: keys (rotated) and values per cache slot, kv
    heads before slots (the layout the attention contracts in);
  mask_BxS: which slots hold real tokens (False for padding / unwritten).
A call with `cache_index=c` writes its T tokens to slots c..c+T-1 and each
new token attends to written real slots at or before its own slot. Each
layer's arrays are separate buffers updated by one dynamic-update-slice,
so a decode step whose cache is donated (or carried by a while_loop)
writes in place: no transposes, no re-stacking of the L layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stepjax.models import config as config_lib
from stepjax.models import layers


def mrope_axes(cfg: config_lib.TextConfig) -> np.ndarray:
  """int32[K/2]: the position axis (0 time, 1 height, 2 width) that rotary
  frequency j turns with: contiguous sections, or interleaved."""
  half = cfg.head_dim // 2
  if not cfg.mrope_interleaved:
    return np.concatenate(
      [np.full((n,), i, np.int32) for i, n in enumerate(cfg.mrope_section)]
    )
  axes = np.zeros(half, np.int32)
  for axis in (1, 2):
    axes[axis : 3 * cfg.mrope_section[axis] : 3] = axis
  return axes


def mrope_cos_sin(positions_3xBxT, cfg: config_lib.TextConfig, dtype):
  """cos, sin (B x T x K): frequency j rotates with axis section_of[j]."""
  freq = layers.inv_freq(cfg.head_dim, cfg.rope_theta)  # K/2
  ang = positions_3xBxT[..., None].astype(jnp.float32) * freq  # 3xBxTxK/2
  axis_of = jnp.asarray(mrope_axes(cfg))
  ang = jnp.take_along_axis(ang, axis_of[None, None, None, :], axis=0)[0]
  ang = jnp.concatenate([ang, ang], axis=-1)
  return jnp.cos(ang).astype(dtype), jnp.sin(ang).astype(dtype)


def _attend(q_BxGxRxTxK, k_BxGxSxK, v_BxGxSxK, mask_BxTxS):
  """Masked softmax attention with grouped queries (R per kv head)."""
  kd = q_BxGxRxTxK.shape[-1]
  logits = jnp.einsum("bgrtk,bgsk->bgrts", q_BxGxRxTxK, k_BxGxSxK) * kd**-0.5
  logits = jnp.where(
    mask_BxTxS[:, None, None], logits, jnp.finfo(logits.dtype).min
  )
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.einsum(
    "bgrts,bgsk->bgrtk", probs.astype(v_BxGxSxK.dtype), v_BxGxSxK
  )


class Attention(nnx.Module):
  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    t = cfg.text
    kw = dict(
      rngs=rngs,
      param_dtype=cfg.param_dtype,
      dtype=cfg.dtype,
      std=cfg.initializer_range,
    )
    d, k = t.hidden_size, t.head_dim
    bias = t.attention_bias
    self.q = layers.Dense(
      (d,), (t.num_heads, k), ("embed",), ("heads", "head_dim"),
      use_bias=bias, **kw,
    )  # fmt: skip
    self.k = layers.Dense(
      (d,), (t.num_kv_heads, k), ("embed",), ("kv_heads", "head_dim"),
      use_bias=bias, **kw,
    )  # fmt: skip
    self.v = layers.Dense(
      (d,), (t.num_kv_heads, k), ("embed",), ("kv_heads", "head_dim"),
      use_bias=bias, **kw,
    )  # fmt: skip
    norm = (k, t.rms_norm_eps, "head_dim", cfg.param_dtype, cfg.dtype)
    self.q_norm = nnx.data(layers.RMSNorm(*norm) if t.qk_norm else None)
    self.k_norm = nnx.data(layers.RMSNorm(*norm) if t.qk_norm else None)
    self.o = layers.Dense(
      (t.num_heads, k), (d,), ("heads", "head_dim"), ("embed",),
      use_bias=False, **kw,
    )  # fmt: skip
    self.dtype = layers.to_dtype(cfg.dtype)
    self.row_loop = cfg.attention == "rows"

  def __call__(self, x_BxTxD, cos, sin, mask_BxTxS, kv=None, cache_index=0):
    """kv: None or this layer's cache {"k_BxGxSxK", "v_BxGxSxK"}.

    Returns (out_BxTxD, the updated layer cache or None).
    """
    q_BxTxNxK, k_BxTxGxK = self.q(x_BxTxD), self.k(x_BxTxD)
    if self.q_norm is not None:
      q_BxTxNxK, k_BxTxGxK = self.q_norm(q_BxTxNxK), self.k_norm(k_BxTxGxK)
    q_BxTxNxK = layers.apply_rotary(q_BxTxNxK, cos, sin)
    k_BxGxTxK = jnp.swapaxes(layers.apply_rotary(k_BxTxGxK, cos, sin), 1, 2)
    v_BxGxTxK = jnp.swapaxes(self.v(x_BxTxD), 1, 2)
    if kv is None:
      k, v, new_kv = k_BxGxTxK, v_BxGxTxK, None
    else:
      ck, cv = kv["k_BxGxSxK"], kv["v_BxGxSxK"]
      start = (0, 0, cache_index, 0)
      k = jax.lax.dynamic_update_slice(ck, k_BxGxTxK.astype(ck.dtype), start)
      v = jax.lax.dynamic_update_slice(cv, v_BxGxTxK.astype(cv.dtype), start)
      new_kv = {"k_BxGxSxK": k, "v_BxGxSxK": v}
    b, t, n, kd = q_BxTxNxK.shape
    g = k.shape[1]
    # Heads-major queries: both dot products then run in the cache's
    # layout with their outputs in natural order (no transposes when T=1).
    q = q_BxTxNxK.reshape(b, t, g, n // g, kd).transpose(0, 2, 3, 1, 4)
    k, v = k.astype(self.dtype), v.astype(self.dtype)
    if kv is None and self.row_loop:
      # One sequence at a time, recomputed in the backward pass: each
      # row's [heads, T, T] scores stay in cache instead of streaming the
      # whole batch's through memory (several times faster on CPU).
      attend_row = jax.checkpoint(
        lambda a: _attend(a[0][None], a[1][None], a[2][None], a[3][None])[0]
      )
      out = jax.lax.map(attend_row, (q, k, v, mask_BxTxS))
    else:
      out = _attend(q, k, v, mask_BxTxS)
    out = out.transpose(0, 3, 1, 2, 4)
    return self.o(out.reshape(b, t, n, kd)), new_kv


class DecoderLayer(nnx.Module):
  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    t = cfg.text
    norm = dict(
      eps=t.rms_norm_eps,
      axis="embed",
      param_dtype=cfg.param_dtype,
      dtype=cfg.dtype,
    )
    self.input_norm = layers.RMSNorm(t.hidden_size, **norm)
    self.attn = Attention(cfg, rngs)
    self.post_attn_norm = layers.RMSNorm(t.hidden_size, **norm)
    self.mlp = layers.GatedMLP(
      cfg.text.hidden_size,
      cfg.text.intermediate_size,
      use_bias=False,
      rngs=rngs,
      param_dtype=cfg.param_dtype,
      dtype=cfg.dtype,
      std=cfg.initializer_range,
    )

  def __call__(self, x, cos, sin, mask, kv=None, cache_index=0):
    h, new_kv = self.attn(self.input_norm(x), cos, sin, mask, kv, cache_index)
    x = x + h
    return x + self.mlp(self.post_attn_norm(x)), new_kv


class Decoder(nnx.Module):
  """Token embedding, decoder layers, final norm (no lm_head)."""

  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    t = cfg.text
    self.cfg = cfg
    self.embed = layers.param(
      rngs,
      (t.vocab_size, t.hidden_size),
      ("vocab", "embed"),
      cfg.param_dtype,
      std=cfg.initializer_range,
    )
    self.layers = nnx.List(
      [DecoderLayer(cfg, rngs) for _ in range(t.num_layers)]
    )
    self.final_norm = layers.RMSNorm(
      t.hidden_size, t.rms_norm_eps, "embed", cfg.param_dtype, cfg.dtype
    )

  def embed_tokens(self, ids_BxT):
    table = self.embed[...].astype(layers.to_dtype(self.cfg.dtype))
    return jnp.take(table, ids_BxT, axis=0)

  def __call__(
    self,
    x_BxTxD,
    positions_3xBxT,
    attn_mask_BxT,
    cache=None,
    cache_index=None,
    deepstack=None,
    remat=None,
  ):
    """Returns (hidden_BxTxD after the final norm, new cache or None).

    deepstack: None, or (levels_SxFxD, src_BxT, is_img_BxT): after layer
    s < S, token (b, t) with is_img gets levels[s, src[b, t]] added.
    remat: recompute each layer in the backward pass; None = `cfg.remat`
    without a cache (a decode step takes no gradient, and nnx.remat cannot
    run inside the sampler's loop); a training forward that runs through a
    cache (`train.steps.shared_prompt_forward`) passes `cfg.remat`.
    """
    dtype = layers.to_dtype(self.cfg.dtype)
    cos, sin = mrope_cos_sin(positions_3xBxT, self.cfg.text, dtype)
    b, t = attn_mask_BxT.shape
    real = attn_mask_BxT.astype(bool)
    if cache is None:
      q_slot = jnp.arange(t)
      key_mask, k_slot = real, jnp.arange(t)
      new_cache = None
    else:
      if cache_index is None:
        raise ValueError("cache_index is required when a cache is given")
      q_slot = cache_index + jnp.arange(t)
      key_mask = jax.lax.dynamic_update_slice(
        cache["mask_BxS"], real, (0, cache_index)
      )
      k_slot = jnp.arange(key_mask.shape[1])
      new_cache = {"mask_BxS": key_mask}
    mask_BxTxS = (k_slot[None, None, :] <= q_slot[None, :, None]) & key_mask[
      :, None, :
    ]
    step = DecoderLayer.__call__
    if remat is None:
      remat = self.cfg.remat and cache is None
    if remat:
      step = nnx.remat(step)
    new_layers = []
    for i, layer in enumerate(self.layers):
      kv = None if cache is None else cache["layers"][i]
      x_BxTxD, new_kv = step(layer, x_BxTxD, cos, sin, mask_BxTxS, kv,
                             cache_index)  # fmt: skip
      new_layers.append(new_kv)
      if deepstack is not None and i < deepstack[0].shape[0]:
        levels_SxFxD, src_BxT, is_img_BxT = deepstack
        add_BxTxD = levels_SxFxD[i][src_BxT].astype(x_BxTxD.dtype)
        x_BxTxD = x_BxTxD + jnp.where(is_img_BxT[..., None], add_BxTxD, 0)
    if new_cache is not None:
      new_cache["layers"] = tuple(new_layers)
    return self.final_norm(x_BxTxD), new_cache


def init_cache(
  cfg: config_lib.ModelConfig, batch: int, max_len: int, dtype=None
) -> dict:
  """Zeroed cache for `batch` rows and `max_len` slots (see module doc)."""
  t = cfg.text
  dtype = layers.to_dtype(cfg.dtype) if dtype is None else dtype
  shape = (batch, t.num_kv_heads, max_len, t.head_dim)
  return {
    "layers": tuple(
      {
        "k_BxGxSxK": jnp.zeros(shape, dtype),
        "v_BxGxSxK": jnp.zeros(shape, dtype),
      }
      for _ in range(t.num_layers)
    ),
    "mask_BxS": jnp.zeros((batch, max_len), bool),
  }
