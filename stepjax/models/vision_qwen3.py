"""Qwen3-VL vision tower in fixed padded shapes.

I: images, N: patch rows per image (padded bucket), P: patch row length,
D: vision width, G: learned position grid rows (side x side), M = N / 4
merged tokens per image, E: merged width (the decoder's hidden size),
S: DeepStack levels.

Per image, as transformers' `Qwen3VLVisionModel`: patch embedding (a
Conv3d with bias, here a matmul over patch rows) plus the learned position
grid resampled to the image (`VisionMeta.interp_*`: 4 bilinear taps per
row), then blocks of LayerNorm -> attention with 2D rotary over the whole
frame -> LayerNorm -> GELU (tanh) MLP. The outputs of blocks
`deepstack_visual_indexes` go through their own mergers (LayerNorm after
the 2x2 concatenation); the last block's through the main merger
(LayerNorm before it). Without windows the rows stay in patch order.

Output: img_IxMx((1+S)E), the merged tokens followed by the S DeepStack
levels along the feature axis (`split_levels` takes them apart), and
valid_IxM.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from stepjax.models import config as config_lib
from stepjax.models import layers, vision, vision_index


class Qwen3VisionBlock(nnx.Module):
  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    norm = dict(eps=1e-6, axis="embed", param_dtype=cfg.param_dtype)
    self.norm1 = layers.LayerNorm(v.hidden_size, dtype=cfg.dtype, **norm)
    self.norm2 = layers.LayerNorm(v.hidden_size, dtype=cfg.dtype, **norm)
    self.attn = vision.VisionAttention(cfg, rngs)
    self.mlp = layers.MLP(
      v.hidden_size,
      v.intermediate_size,
      rngs=rngs,
      param_dtype=cfg.param_dtype,
      dtype=cfg.dtype,
      std=cfg.initializer_range,
    )

  def __call__(self, x_IxNxD, cos, sin, mask_IxNxN):
    x_IxNxD = x_IxNxD + self.attn(self.norm1(x_IxNxD), cos, sin, mask_IxNxN)
    return x_IxNxD + self.mlp(self.norm2(x_IxNxD))


class Qwen3PatchMerger(nnx.Module):
  """LayerNorm, 2x2 neighbours concatenated, Linear -> GELU -> Linear.

  `post_shuffle`: normalise the concatenated 4D-wide rows (DeepStack
  mergers) instead of each D-wide row (the main merger).
  """

  def __init__(
    self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs, post_shuffle: bool
  ):
    v = cfg.vision
    wide = v.hidden_size * v.merge_unit
    kw = layers.dense_kwargs(cfg, rngs, use_bias=True)
    self.post_shuffle = post_shuffle
    self.norm = layers.LayerNorm(
      wide if post_shuffle else v.hidden_size,
      1e-6,
      "mlp" if post_shuffle else "embed",
      cfg.param_dtype,
      cfg.dtype,
    )
    self.fc1 = layers.Dense((wide,), (wide,), ("mlp",), ("mlp",), **kw)
    self.fc2 = layers.Dense(
      (wide,), (v.out_hidden_size,), ("mlp",), ("embed",), **kw
    )
    self.unit = v.merge_unit

  def __call__(self, x_IxNxD):
    i, n, d = x_IxNxD.shape
    if self.post_shuffle:
      x = self.norm(x_IxNxD.reshape(i, n // self.unit, d * self.unit))
    else:
      x = self.norm(x_IxNxD).reshape(i, n // self.unit, d * self.unit)
    return self.fc2(layers.gelu_exact(self.fc1(x)))


class Qwen3VisionTower(nnx.Module):
  """pixels_IxNxP + VisionMeta -> (img_IxMx((1+S)E), valid_IxM)."""

  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    self.cfg = cfg
    self.patch_embed = vision.patch_embedding(cfg, rngs, use_bias=True)
    self.pos_embed = layers.param(
      rngs,
      (v.num_position_embeddings, v.hidden_size),
      (None, "embed"),
      cfg.param_dtype,
      std=cfg.initializer_range,
    )
    self.blocks = nnx.List(
      [Qwen3VisionBlock(cfg, rngs) for _ in range(v.depth)]
    )
    self.merger = Qwen3PatchMerger(cfg, rngs, post_shuffle=False)
    self.deepstack_mergers = nnx.List(
      [
        Qwen3PatchMerger(cfg, rngs, post_shuffle=True)
        for _ in v.deepstack_visual_indexes
      ]
    )

  def positions(self, meta: vision_index.VisionMeta):
    """pos_IxNxD: the learned grid resampled at each row (float32)."""
    table_GxD = self.pos_embed[...].astype(jnp.float32)
    idx_IxNx4 = jnp.asarray(meta.interp_idx_IxNx4)
    w_IxNx4 = jnp.asarray(meta.interp_w_IxNx4, jnp.float32)
    return jnp.einsum("inkd,ink->ind", table_GxD[idx_IxNx4], w_IxNx4)

  def __call__(self, pixels_IxNxP, meta: vision_index.VisionMeta):
    v = self.cfg.vision
    x = self.patch_embed(pixels_IxNxP)
    x = x + self.positions(meta).astype(x.dtype)
    cos, sin = vision.rotary(jnp.asarray(meta.pos_IxNx2), v)
    mask_IxNxN = vision.frame_mask(meta)
    step = Qwen3VisionBlock.__call__
    if self.cfg.remat:
      step = nnx.remat(step)
    levels = []
    for idx, block in enumerate(self.blocks):
      x = step(block, x, cos, sin, mask_IxNxN)
      if idx in v.deepstack_visual_indexes:
        level = v.deepstack_visual_indexes.index(idx)
        levels.append(self.deepstack_mergers[level](x))
    img = jnp.concatenate([self.merger(x)] + levels, axis=-1)
    return img, jnp.asarray(meta.valid_IxM)


def split_levels(img_IxMxF, width: int):
  """(main_IxMxE, levels_SxIxMxE) of a tower output whose features are
  the merged tokens then S DeepStack levels, each `width` wide."""
  levels = img_IxMxF.shape[-1] // width
  parts = jnp.reshape(img_IxMxF, (*img_IxMxF.shape[:-1], levels, width))
  parts = jnp.moveaxis(parts, -2, 0)
  return parts[0], parts[1:]
