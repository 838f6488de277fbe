"""Qwen2.5-VL vision tower in fixed padded shapes.

I: images, N: patch rows per image (padded bucket), P: patch row length
(C*Tp*p*p), D: vision width, H: heads, K: head_dim, M = N / 4 merged tokens,
E: merged output width (the decoder's hidden size).

Per image: patch embedding (transformers' Conv3d with stride = kernel is a
matmul over patch rows), reorder the rows window by window
(`VisionMeta.perm_IxN`), blocks of RMSNorm -> attention with 2D rotary ->
RMSNorm -> gated SiLU MLP, where attention is limited to the same window
(or the same frame on `fullatt_block_indexes`) through segment ids, then the
2x2 patch merger and the inverse reordering.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from stepjax.models import config as config_lib
from stepjax.models import layers, vision_index


class VisionAttention(nnx.Module):
  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    kw = dict(
      rngs=rngs,
      param_dtype=cfg.param_dtype,
      dtype=cfg.dtype,
      std=cfg.initializer_range,
    )
    self.qkv = layers.Dense(
      (v.hidden_size,),
      (3, v.num_heads, v.head_dim),
      ("embed",),
      (None, "heads", "head_dim"),
      use_bias=True,
      **kw,
    )
    self.proj = layers.Dense(
      (v.num_heads, v.head_dim),
      (v.hidden_size,),
      ("heads", "head_dim"),
      ("embed",),
      use_bias=True,
      **kw,
    )
    self.dtype = layers.to_dtype(cfg.dtype)

  def __call__(self, x_IxNxD, cos_IxNxK, sin_IxNxK, mask_IxNxN):
    qkv = self.qkv(x_IxNxD)  # I x N x 3 x H x K
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # Rotary in float32, as transformers' apply_rotary_pos_emb_vision.
    q = layers.apply_rotary(q.astype(jnp.float32), cos_IxNxK, sin_IxNxK)
    k = layers.apply_rotary(k.astype(jnp.float32), cos_IxNxK, sin_IxNxK)
    q, k = q.astype(self.dtype), k.astype(self.dtype)
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("inhk,imhk->ihnm", q, k) * scale
    logits = jnp.where(mask_IxNxN[:, None], logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    out = jnp.einsum("ihnm,imhk->inhk", probs.astype(self.dtype), v)
    return self.proj(out)


class VisionMLP(nnx.Module):
  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    kw = dict(
      rngs=rngs,
      param_dtype=cfg.param_dtype,
      dtype=cfg.dtype,
      std=cfg.initializer_range,
      use_bias=True,
    )
    d, f = v.hidden_size, v.intermediate_size
    self.gate = layers.Dense((d,), (f,), ("embed",), ("mlp",), **kw)
    self.up = layers.Dense((d,), (f,), ("embed",), ("mlp",), **kw)
    self.down = layers.Dense((f,), (d,), ("mlp",), ("embed",), **kw)

  def __call__(self, x):
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class VisionBlock(nnx.Module):
  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    d = cfg.vision.hidden_size
    norm = dict(eps=1e-6, axis="embed", param_dtype=cfg.param_dtype)
    self.norm1 = layers.RMSNorm(d, dtype=cfg.dtype, **norm)
    self.norm2 = layers.RMSNorm(d, dtype=cfg.dtype, **norm)
    self.attn = VisionAttention(cfg, rngs)
    self.mlp = VisionMLP(cfg, rngs)

  def __call__(self, x, cos, sin, mask):
    x = x + self.attn(self.norm1(x), cos, sin, mask)
    return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
  """RMSNorm, then 2x2 neighbours concatenated -> Linear -> GELU -> Linear."""

  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    wide = v.hidden_size * v.merge_unit
    kw = dict(
      rngs=rngs,
      param_dtype=cfg.param_dtype,
      dtype=cfg.dtype,
      std=cfg.initializer_range,
      use_bias=True,
    )
    self.ln_q = layers.RMSNorm(
      v.hidden_size, 1e-6, "embed", cfg.param_dtype, cfg.dtype
    )
    self.fc1 = layers.Dense((wide,), (wide,), ("mlp",), ("mlp",), **kw)
    self.fc2 = layers.Dense(
      (wide,), (v.out_hidden_size,), ("mlp",), ("embed",), **kw
    )
    self.unit = v.merge_unit

  def __call__(self, x_IxNxD):
    i, n, d = x_IxNxD.shape
    x = self.ln_q(x_IxNxD).reshape(i, n // self.unit, d * self.unit)
    return self.fc2(layers.gelu_exact(self.fc1(x)))


class VisionTower(nnx.Module):
  """pixels_IxNxP + VisionMeta -> (img_IxMxE, valid_IxM)."""

  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    self.cfg = cfg
    self.patch_embed = layers.Dense(
      (v.patch_dim,),
      (v.hidden_size,),
      (None,),
      ("embed",),
      use_bias=False,
      rngs=rngs,
      param_dtype=cfg.param_dtype,
      dtype=cfg.dtype,
      std=cfg.initializer_range,
    )
    self.blocks = nnx.List([VisionBlock(cfg, rngs) for _ in range(v.depth)])
    self.merger = PatchMerger(cfg, rngs)

  def rotary(self, pos_IxNx2):
    """cos, sin of the 2D rotary embedding: I x N x head_dim, float32."""
    v = self.cfg.vision
    freq = layers.inv_freq(v.head_dim // 2, v.rope_theta)  # K/4 frequencies
    ang = pos_IxNx2[..., None].astype(jnp.float32) * freq  # I x N x 2 x K/4
    ang = ang.reshape(*ang.shape[:-2], -1)  # [h freqs, w freqs]
    ang = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(ang), jnp.sin(ang)

  def __call__(self, pixels_IxNxP, meta: vision_index.VisionMeta):
    v = self.cfg.vision
    perm = jnp.asarray(meta.perm_IxN)
    x = self.patch_embed(pixels_IxNxP)
    x = jnp.take_along_axis(x, perm[..., None], axis=1)
    cos, sin = self.rotary(jnp.asarray(meta.pos_IxNx2))

    def seg_mask(seg_IxN):
      seg = jnp.asarray(seg_IxN)
      return seg[:, :, None] == seg[:, None, :]

    window_mask, full_mask = (
      seg_mask(meta.window_seg_IxN),
      seg_mask(meta.full_seg_IxN),
    )
    for idx, block in enumerate(self.blocks):
      full = idx in v.fullatt_block_indexes
      x = block(x, cos, sin, full_mask if full else window_mask)
    merged = self.merger(x)  # I x M x E, window order
    unperm = jnp.asarray(meta.unperm_IxM)
    img = jnp.take_along_axis(merged, unperm[..., None], axis=1)
    return img, jnp.asarray(meta.valid_IxM)
