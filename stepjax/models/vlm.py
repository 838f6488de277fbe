"""The vision-language policy: vision tower + decoder + lm_head.

One module for all families (`cfg.family`): Qwen2.5-VL (window-attention
tower, Qwen2 decoder), Qwen3-VL (`vision_qwen3` tower with a learned
position grid and DeepStack, Qwen3 decoder with q/k norms and interleaved
M-RoPE) and InternVL3 (`vision_internvl`: InternViT on 448-pixel tiles and
a projector; Qwen2 decoder with 1D positions, all three M-RoPE rows
equal). Callers never branch on the family: image features are opaque
arrays img_IxMxF (F = E, or (1+S)E with S DeepStack levels) passed back
to the forward.

Shapes: B batch, T tokens in this call, S cache slots, V vocab, D decoder
hidden, I images, N padded patch rows per image, P = 3*2*14*14 patch row,
M = N / 4 merged tokens per image, L layers, G kv heads, K head_dim.

Host side (numpy, once per batch, outside jit):
  meta = vision_index.vision_metadata(grid_thw_Ix3, N, cfg.vision)
  pixels_IxNxP = vision_index.pad_pixels(pixel_values, grid_thw_Ix3, N)
      (or build pixels_IxNxP directly; rows past t*h*w are ignored)
  positions_3xBxT, deltas_B = rope_index.rope_index(
      input_ids_BxT, attn_mask_BxT, grid_thw_Ix3, cfg)
Images are numbered in reading order of their `<|image_pad|>` runs (row by
row, left to right); image i must have t*h*w/4 pad tokens. A row may hold
several images; an image slot with grid (0, 0, 0) is empty (no valid
tokens, no pad tokens) and is skipped, so batches can pad their image
axis (`stepjax/image_slots.py`).

Forward (a method; or `forward(graphdef, params, ...)` for jit):
  logits_BxTxV, hidden_BxTxD, new_cache = model(
      input_ids_BxT,            # int32; left padding allowed
      positions_3xBxT,          # int32 M-RoPE positions (rope_index)
      attn_mask_BxT,            # bool/int, 1 = real token
      pixels_IxNxP=None, vision_meta=None,      # images, or instead
      img_IxMxD=None, img_valid_IxM=None,       # precomputed features
      cache=None, cache_index=None)             # KV cache, see below
  hidden_BxTxD is the final-norm hidden state (input of lm_head and of
  step_value.StepValueHead).

KV cache, for a sampler:
  cache = language.init_cache(cfg, B, S)  # or model.init_cache(B, S)
  prefill: model(prompt_ids_BxT, positions, mask_BxT, pixels..., meta,
                 cache=cache, cache_index=0)  -> writes slots 0..T-1
  decode:  model(tok_Bx1, rope_index.next_positions(num_real_B, deltas_B),
                 ones_Bx1, cache=cache, cache_index=T + step)
  where num_real_B counts the real tokens already in the cache (prompt
  tokens with mask 1 plus decoded tokens). `cache_index` may be a traced
  int32 scalar; the cache's `mask_BxS` remembers padding, so later calls
  only pass the mask of their own tokens. Without a cache the call is a
  plain causal forward over T tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from stepjax.models import config as config_lib
from stepjax.models import (
  language,
  layers,
  vision,
  vision_index,
  vision_internvl,
  vision_qwen3,
)


class VisionLanguageModel(nnx.Module):
  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    if cfg.family == "qwen3_vl":
      self.visual = vision_qwen3.Qwen3VisionTower(cfg, rngs)
    elif cfg.family == "internvl":
      self.visual = vision_internvl.InternVisionTower(cfg, rngs)
    else:
      self.visual = vision.VisionTower(cfg, rngs)
    self.language = language.Decoder(cfg, rngs)
    t = cfg.text
    self.lm_head = (
      None
      if cfg.tie_word_embeddings
      else layers.Dense(
        (t.hidden_size,),
        (t.vocab_size,),
        ("embed",),
        ("vocab",),
        use_bias=False,
        rngs=rngs,
        param_dtype=cfg.param_dtype,
        dtype=cfg.dtype,
        std=cfg.initializer_range,
      )
    )

  def encode_images(self, pixels_IxNxP, vision_meta: vision_index.VisionMeta):
    """Merged image features img_IxMxD and their validity valid_IxM."""
    return self.visual(pixels_IxNxP, vision_meta)

  def logits(self, hidden_BxTxD):
    if self.lm_head is None:
      table = self.language.embed[...].astype(layers.to_dtype(self.cfg.dtype))
      return jnp.einsum("btd,vd->btv", hidden_BxTxD, table)
    return self.lm_head(hidden_BxTxD)

  def embed(self, input_ids_BxT, img_IxMxD=None, img_valid_IxM=None):
    """Token embeddings with image features scattered into the pad tokens,
    and the DeepStack inputs of the decoder (None without levels).

    The k-th `<|image_pad|>` token of the batch (reading order) receives
    the k-th valid merged image feature.
    """
    x = self.language.embed_tokens(input_ids_BxT)
    if img_IxMxD is None:
      return x, None
    main, levels = vision_qwen3.split_levels(img_IxMxD, x.shape[-1])
    feats = main.reshape(-1, main.shape[-1]).astype(x.dtype)
    valid = jnp.asarray(img_valid_IxM).reshape(-1)
    order = jnp.argsort(~valid, stable=True)  # valid features first
    is_img = input_ids_BxT == self.cfg.image_pad_token_id
    k = jnp.cumsum(is_img.reshape(-1)).reshape(is_img.shape) - 1
    src_BxT = order[jnp.clip(k, 0, feats.shape[0] - 1)]
    x = jnp.where(is_img[..., None], feats[src_BxT], x)
    if levels.shape[0] == 0:
      return x, None
    levels_SxFxD = levels.reshape(levels.shape[0], -1, levels.shape[-1])
    return x, (levels_SxFxD, src_BxT, is_img)

  def __call__(
    self,
    input_ids_BxT,
    positions_3xBxT,
    attn_mask_BxT,
    *,
    pixels_IxNxP=None,
    vision_meta=None,
    img_IxMxD=None,
    img_valid_IxM=None,
    cache=None,
    cache_index=None,
    remat=None,
  ):
    """Returns (logits_BxTxV, hidden_BxTxD, new_cache); see module doc.
    remat: see `language.Decoder.__call__`."""
    if pixels_IxNxP is not None:
      if vision_meta is None:
        raise ValueError("pixels_IxNxP needs vision_meta (vision_metadata)")
      if img_IxMxD is not None:
        raise ValueError("pass pixels_IxNxP or img_IxMxD, not both")
      img_IxMxD, img_valid_IxM = self.encode_images(pixels_IxNxP, vision_meta)
    elif img_IxMxD is not None and img_valid_IxM is None:
      img_valid_IxM = jnp.ones(img_IxMxD.shape[:2], bool)
    x, deepstack = self.embed(input_ids_BxT, img_IxMxD, img_valid_IxM)
    hidden, new_cache = self.language(
      x,
      positions_3xBxT,
      jnp.asarray(attn_mask_BxT),
      cache,
      cache_index,
      deepstack,
      remat,
    )
    return self.logits(hidden), hidden, new_cache

  def init_cache(self, batch: int, max_len: int, dtype=None):
    return language.init_cache(self.cfg, batch, max_len, dtype)


def create(cfg: config_lib.ModelConfig, seed: int = 0) -> VisionLanguageModel:
  return VisionLanguageModel(cfg, nnx.Rngs(params=seed))


def abstract(cfg: config_lib.ModelConfig):
  """(graphdef, abstract param state) without allocating anything: what
  `nnx.eval_shape` of `create` gives, built without tracing (0.6 s instead
  of ~10 s for an 8B model)."""
  with layers.shapes_only():
    model = VisionLanguageModel(cfg, nnx.Rngs(params=0))
  return nnx.split(model, nnx.Param)


def param_count(cfg: config_lib.ModelConfig) -> int:
  _, state = abstract(cfg)
  return sum(int(x.size) for x in jax.tree.leaves(state))


def forward(graphdef, params, *args, **kwargs):
  """Functional form of `VisionLanguageModel.__call__`, for jax.jit."""
  return nnx.merge(graphdef, params)(*args, **kwargs)


def encode_images(graphdef, params, pixels_IxNxP, vision_meta):
  """Functional form of `VisionLanguageModel.encode_images`."""
  return nnx.merge(graphdef, params).encode_images(pixels_IxNxP, vision_meta)
