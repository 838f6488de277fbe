"""InternVL's vision tower (InternViT) and projector in fixed padded shapes.

I: images, N: patch rows per image (padded bucket), P = 3*14*14 patch row,
D: vision width, H: heads, K: head_dim, R = s*s patches of one tile (s =
image_size / patch_size; 1024 at 448 pixels), X: tiles of all images
(I * ceil(N / R)), M = N / 4 merged tokens, E: the decoder's width.

An image is T tiles of image_size x image_size pixels (grid_thw = (T, s,
s)); each tile is a frame whose R rows come merge-block-major, as
`images.patchify` cuts them. Per tile, as transformers'
`InternVLVisionModel`: patch embedding (Conv2d with bias; a matmul over
patch rows) plus the learned absolute positions, a CLS token in front,
blocks of norm -> attention over the tile (q/k/v biases and an RMSNorm of
all heads of q and k as configured) scaled by lambda_1 -> norm -> GELU
MLP scaled by lambda_2, then (without mean pooling) a final LayerNorm.
The CLS row is dropped and `InternVLModel.pixel_shuffle` (scale 0.5) puts
each 2x2 block of patches into one 4D-wide token, channels ordered (row in
block, column in block, feature): on block-major rows that is a reshape.
The projector (LayerNorm, Linear, GELU, Linear) maps it to E.

Padding rows past the last real tile form whole padding tiles (the rows
are padded to a multiple of R inside); their tokens are marked invalid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stepjax.models import config as config_lib
from stepjax.models import layers, vision, vision_index


def raster_index(side: int) -> np.ndarray:
  """int[side*side]: raster position (row * side + col) of each
  merge-block-major patch row of a tile."""
  grid = np.arange(side * side).reshape(side // 2, 2, side // 2, 2)
  return grid.transpose(0, 2, 1, 3).reshape(-1)


def tiles_from_rows(pixels_NxP: np.ndarray, vcfg) -> np.ndarray:
  """Host-side: patch rows of whole tiles (merge-block-major, each row
  C x p x p) -> transformers' pixel_values [tiles, C, S, S]."""
  s, p, c = vcfg.tile_side, vcfg.patch_size, vcfg.in_channels
  x = np.asarray(pixels_NxP).reshape(-1, s // 2, s // 2, 2, 2, c, p, p)
  # (tile, bh, bw, ih, iw, C, py, px) -> (tile, C, bh, ih, py, bw, iw, px)
  x = x.transpose(0, 5, 1, 3, 6, 2, 4, 7)
  return np.ascontiguousarray(x.reshape(-1, c, s * p, s * p))


def _norm(cfg: config_lib.ModelConfig, dim: int, axis: str = "embed"):
  v = cfg.vision
  norm_cls = layers.RMSNorm if v.norm_type == "rms_norm" else layers.LayerNorm
  return norm_cls(dim, v.layer_norm_eps, axis, cfg.param_dtype, cfg.dtype)


def _layer_scale(cfg: config_lib.ModelConfig) -> nnx.Param:
  v = cfg.vision
  return layers.param(
    None,
    (v.hidden_size,),
    ("embed",),
    cfg.param_dtype,
    init="full",
    fill=v.layer_scale_init_value,
  )


class InternAttention(nnx.Module):
  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    kw = layers.dense_kwargs(cfg, rngs)
    d, h, k = v.hidden_size, v.num_heads, v.head_dim

    def proj():
      return layers.Dense(
        (d,), (h, k), ("embed",), ("heads", "head_dim"),
        use_bias=v.attention_bias, **kw,
      )  # fmt: skip

    self.q, self.k, self.v = proj(), proj(), proj()
    self.proj = layers.Dense(
      (h, k), (d,), ("heads", "head_dim"), ("embed",), use_bias=True, **kw
    )
    rms = dict(eps=1e-6, axis="embed", param_dtype=cfg.param_dtype)
    self.q_norm = (
      layers.RMSNorm(d, dtype=cfg.dtype, **rms) if v.qk_norm else None
    )
    self.k_norm = (
      layers.RMSNorm(d, dtype=cfg.dtype, **rms) if v.qk_norm else None
    )
    self.dtype = layers.to_dtype(cfg.dtype)

  def _normed(self, norm, x_XxLxHxK):
    if norm is None:
      return x_XxLxHxK
    return norm(x_XxLxHxK.reshape(*x_XxLxHxK.shape[:2], -1)).reshape(
      x_XxLxHxK.shape
    )

  def __call__(self, x_XxLxD):
    """Full attention over the L rows of each tile."""
    q = self._normed(self.q_norm, self.q(x_XxLxD))
    k = self._normed(self.k_norm, self.k(x_XxLxD))
    v = self.v(x_XxLxD)
    logits = jnp.einsum("xlhk,xmhk->xhlm", q, k) * q.shape[-1] ** -0.5
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    out = jnp.einsum("xhlm,xmhk->xlhk", probs.astype(self.dtype), v)
    return self.proj(out)


class InternBlock(nnx.Module):
  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    self.norm1 = _norm(cfg, v.hidden_size)
    self.norm2 = _norm(cfg, v.hidden_size)
    self.attn = InternAttention(cfg, rngs)
    self.mlp = layers.MLP(
      v.hidden_size,
      v.intermediate_size,
      approximate=False,
      **layers.dense_kwargs(cfg, rngs),
    )
    self.lambda1 = _layer_scale(cfg)
    self.lambda2 = _layer_scale(cfg)

  def __call__(self, x_XxLxD):
    dt = x_XxLxD.dtype
    x_XxLxD = x_XxLxD + self.lambda1[...].astype(dt) * self.attn(
      self.norm1(x_XxLxD)
    )
    return x_XxLxD + self.lambda2[...].astype(dt) * self.mlp(
      self.norm2(x_XxLxD)
    )


class Projector(nnx.Module):
  """transformers' InternVLMultiModalProjector on pixel-shuffled tokens."""

  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    wide = v.hidden_size * v.merge_unit
    kw = layers.dense_kwargs(cfg, rngs, use_bias=True)
    e = v.out_hidden_size
    self.norm = layers.LayerNorm(wide, 1e-5, "mlp", cfg.param_dtype, cfg.dtype)
    self.fc1 = layers.Dense((wide,), (e,), ("mlp",), ("embed",), **kw)
    self.fc2 = layers.Dense((e,), (e,), ("mlp",), ("embed",), **kw)

  def __call__(self, x_XxMxF):
    return self.fc2(layers.gelu_exact(self.fc1(self.norm(x_XxMxF))))


class InternVisionTower(nnx.Module):
  """pixels_IxNxP + VisionMeta -> (img_IxMxE, valid_IxM)."""

  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    self.cfg = cfg
    self.patch_embed = vision.patch_embedding(cfg, rngs, use_bias=True)
    init = dict(dtype=cfg.param_dtype, std=cfg.initializer_range)
    self.cls_token = layers.param(rngs, (v.hidden_size,), ("embed",), **init)
    self.pos_embed = layers.param(
      rngs, (v.tile_side**2 + 1, v.hidden_size), (None, "embed"), **init
    )
    self.blocks = nnx.List([InternBlock(cfg, rngs) for _ in range(v.depth)])
    self.final_norm = (
      None
      if v.use_mean_pooling
      else layers.LayerNorm(
        v.hidden_size, v.layer_norm_eps, "embed", cfg.param_dtype, cfg.dtype
      )
    )
    self.projector = Projector(cfg, rngs)

  def tiles(self, pixels_IxNxP):
    """x_XxRxD: embedded patches with positions, tile by tile."""
    v = self.cfg.vision
    rows = v.tile_side**2
    n = pixels_IxNxP.shape[1]
    x = self.patch_embed(pixels_IxNxP)
    x = jnp.pad(x, ((0, 0), (0, -n % rows), (0, 0)))
    x = x.reshape(-1, rows, x.shape[-1])
    pos_RxD = self.pos_embed[...][1 + raster_index(v.tile_side)]
    return x + pos_RxD.astype(x.dtype)

  def __call__(self, pixels_IxNxP, meta: vision_index.VisionMeta):
    v = self.cfg.vision
    i, n, _ = pixels_IxNxP.shape
    x = self.tiles(pixels_IxNxP)
    cls_D = self.cls_token[...] + self.pos_embed[...][0]
    cls = jnp.broadcast_to(cls_D.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1)
    step = InternBlock.__call__
    if self.cfg.remat:
      step = nnx.remat(step)
    for block in self.blocks:
      x = step(block, x)
    x = x[:, 1:]
    if self.final_norm is not None:
      x = self.final_norm(x)
    unit = v.merge_unit
    x = x.reshape(x.shape[0], -1, unit * x.shape[-1])  # pixel shuffle
    img = self.projector(x).reshape(i, -1, v.out_hidden_size)
    return img[:, : n // unit], jnp.asarray(meta.valid_IxM)
