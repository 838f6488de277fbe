"""Qwen2.5-VL vision tower in fixed padded shapes.

I: images, N: patch rows per image (padded bucket), P: patch row length
(C*Tp*p*p), D: vision width, H: heads, K: head_dim, M = N / 4 merged tokens,
E: merged output width (the decoder's hidden size), W: window slots per
image, L: rows per window slot (see vision_index.py).

Per image: patch embedding (transformers' Conv3d with stride = kernel is a
matmul over patch rows), reorder the rows window by window
(`VisionMeta.perm_IxN`), blocks of RMSNorm -> attention with 2D rotary ->
RMSNorm -> gated SiLU MLP, then the 2x2 patch merger and the inverse
reordering. Blocks in `fullatt_block_indexes` attend over the whole frame
(a dense N x N mask of frame ids); the others gather queries, keys and
values into W window slots of L rows and attend inside each slot (W x L x
L, segment ids keeping windows that share a slot apart), then scatter the
result back to the N rows. With `cfg.remat` each block is rematerialised
in the backward pass (only its input is kept).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from stepjax.models import config as config_lib
from stepjax.models import layers, vision_index


def rotary(pos_IxNx2, vcfg: config_lib.VisionConfig):
  """cos, sin of the 2D rotary embedding: I x N x head_dim, float32."""
  freq = layers.inv_freq(vcfg.head_dim // 2, vcfg.rope_theta)  # K/4 freqs
  ang = pos_IxNx2[..., None].astype(jnp.float32) * freq  # I x N x 2 x K/4
  ang = ang.reshape(*ang.shape[:-2], -1)  # [h freqs, w freqs]
  ang = jnp.concatenate([ang, ang], axis=-1)
  return jnp.cos(ang), jnp.sin(ang)


def patch_embedding(cfg: config_lib.ModelConfig, rngs, use_bias: bool):
  """The patch embedding (a Conv with stride = kernel) as a Dense over
  patch rows: P -> D."""
  v = cfg.vision
  return layers.Dense(
    (v.patch_dim,),
    (v.hidden_size,),
    (None,),
    ("embed",),
    use_bias=use_bias,
    rngs=rngs,
    param_dtype=cfg.param_dtype,
    dtype=cfg.dtype,
    std=cfg.initializer_range,
  )


def frame_mask(meta: vision_index.VisionMeta):
  """mask_IxNxN: rows of one frame attend to each other (full attention)."""
  seg = jnp.asarray(meta.full_seg_IxN)
  return seg[:, :, None] == seg[:, None, :]


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

  def __call__(
    self, x_IxNxD, cos_IxNxK, sin_IxNxK, mask_IxNxN=None, windows=None
  ):
    """Attention within mask_IxNxN, or within window slots.

    windows: None, or (slot_rows_IxWxL, mask_IxWxLxL, row_slot_IxN) as
    built by `VisionTower.window_inputs`.
    """
    qkv = self.qkv(x_IxNxD)  # I x N x 3 x H x K
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # Rotary in float32, as transformers' apply_rotary_pos_emb_vision.
    q = layers.apply_rotary(q.astype(jnp.float32), cos_IxNxK, sin_IxNxK)
    k = layers.apply_rotary(k.astype(jnp.float32), cos_IxNxK, sin_IxNxK)
    q, k = q.astype(self.dtype), k.astype(self.dtype)
    if windows is None:
      return self.proj(self._attend(q, k, v, mask_IxNxN))
    slot_rows_IxWxL, mask_IxWxLxL, row_slot_IxN = windows
    i, w, rows = slot_rows_IxWxL.shape
    rows_IxWL = slot_rows_IxWxL.reshape(i, w * rows)

    def to_slots(x_IxNxHxK):
      x = jnp.take_along_axis(x_IxNxHxK, rows_IxWL[:, :, None, None], axis=1)
      return x.reshape(i, w, rows, *x.shape[2:])

    out_IxWxLxHxK = self._attend(to_slots(q), to_slots(k), to_slots(v),
                                 mask_IxWxLxL)  # fmt: skip
    out_IxWLxHxK = out_IxWxLxHxK.reshape(i, w * rows, *q.shape[2:])
    out = jnp.take_along_axis(
      out_IxWLxHxK, row_slot_IxN[:, :, None, None], axis=1
    )
    return self.proj(out)

  def _attend(self, q_XxLxHxK, k_XxLxHxK, v_XxLxHxK, mask_XxLxL):
    """Softmax attention over the L axis; X: any leading axes."""
    scale = q_XxLxHxK.shape[-1] ** -0.5
    logits = jnp.einsum("...nhk,...mhk->...hnm", q_XxLxHxK, k_XxLxHxK)
    logits = logits * scale
    logits = jnp.where(
      mask_XxLxL[..., None, :, :], logits, jnp.finfo(logits.dtype).min
    )
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.einsum(
      "...hnm,...mhk->...nhk", probs.astype(self.dtype), v_XxLxHxK
    )


class VisionBlock(nnx.Module):
  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    d = cfg.vision.hidden_size
    norm = dict(eps=1e-6, axis="embed", param_dtype=cfg.param_dtype)
    self.norm1 = layers.RMSNorm(d, dtype=cfg.dtype, **norm)
    self.norm2 = layers.RMSNorm(d, dtype=cfg.dtype, **norm)
    self.attn = VisionAttention(cfg, rngs)
    self.mlp = layers.GatedMLP(
      cfg.vision.hidden_size,
      cfg.vision.intermediate_size,
      use_bias=True,
      rngs=rngs,
      param_dtype=cfg.param_dtype,
      dtype=cfg.dtype,
      std=cfg.initializer_range,
    )

  def __call__(self, x, cos, sin, mask=None, windows=None):
    """One block; `mask` (full attention) or `windows` (see attention)."""
    x = x + self.attn(self.norm1(x), cos, sin, mask, windows)
    return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
  """RMSNorm, then 2x2 neighbours concatenated -> Linear -> GELU -> Linear."""

  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    wide = v.hidden_size * v.merge_unit
    kw = layers.dense_kwargs(cfg, rngs, use_bias=True)
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
    self.patch_embed = patch_embedding(cfg, rngs, use_bias=False)
    self.blocks = nnx.List([VisionBlock(cfg, rngs) for _ in range(v.depth)])
    self.merger = PatchMerger(cfg, rngs)

  def window_inputs(self, meta: vision_index.VisionMeta):
    """(slot_rows_IxWxL, mask_IxWxLxL, row_slot_IxN) for window blocks."""
    seg = jnp.asarray(meta.slot_seg_IxWxL)
    mask_IxWxLxL = seg[..., :, None] == seg[..., None, :]
    return (
      jnp.asarray(meta.slot_rows_IxWxL),
      mask_IxWxLxL,
      jnp.asarray(meta.row_slot_IxN),
    )

  def __call__(self, pixels_IxNxP, meta: vision_index.VisionMeta):
    v = self.cfg.vision
    perm = jnp.asarray(meta.perm_IxN)
    x = self.patch_embed(pixels_IxNxP)
    x = jnp.take_along_axis(x, perm[..., None], axis=1)
    cos, sin = rotary(jnp.asarray(meta.pos_IxNx2), v)
    full_mask_IxNxN = frame_mask(meta)
    windows = self.window_inputs(meta)
    step = VisionBlock.__call__
    if self.cfg.remat:
      step = nnx.remat(step)
    for idx, block in enumerate(self.blocks):
      if idx in v.fullatt_block_indexes:
        x = step(block, x, cos, sin, full_mask_IxNxN, None)
      else:
        x = step(block, x, cos, sin, None, windows)
    merged = self.merger(x)  # I x M x E, window order
    unperm = jnp.asarray(meta.unperm_IxM)
    img = jnp.take_along_axis(merged, unperm[..., None], axis=1)
    return img, jnp.asarray(meta.valid_IxM)
