"""Shared helpers for the HF parity tests (tiny random Qwen2.5-VL,
Qwen3-VL and InternVL models)."""

from __future__ import annotations

import numpy as np
import torch
import transformers

from stepjax.models import config as config_lib
from stepjax.models import vision_index, vision_internvl

# Row 0: two images (8x12 and 6x4 patches), row 1: one image (4x10), so
# rows differ in length and row 1 is left padded.
GRIDS = np.array([[1, 8, 12], [1, 6, 4], [1, 4, 10]], np.int64)
# InternVL: images of 3, 1 and 2 tiles.
TILES = (3, 1, 2)


def grids(cfg: config_lib.ModelConfig) -> np.ndarray:
  """grid_thw of the three test images for cfg's family."""
  if cfg.family != "internvl":
    return GRIDS
  s = cfg.vision.tile_side
  return np.array([[t, s, s] for t in TILES], np.int64)


def hf_classes(cfg: config_lib.ModelConfig):
  """(config class, model class) of transformers for cfg's family."""
  if cfg.family == "qwen3_vl":
    return (
      transformers.Qwen3VLConfig,
      transformers.Qwen3VLForConditionalGeneration,
    )
  if cfg.family == "internvl":
    return (
      transformers.InternVLConfig,
      transformers.InternVLForConditionalGeneration,
    )
  return (
    transformers.Qwen2_5_VLConfig,
    transformers.Qwen2_5_VLForConditionalGeneration,
  )


def hf_model(cfg: config_lib.ModelConfig, seed: int = 0, std: float = 0.15):
  """Random transformers model (float32, eager attention) for `cfg`."""
  config_cls, model_cls = hf_classes(cfg)
  hf_cfg = config_cls(**cfg.to_hf_dict())
  hf_cfg._attn_implementation = "eager"
  hf_cfg.vision_config._attn_implementation = "eager"
  hf_cfg.text_config._attn_implementation = "eager"
  torch.manual_seed(seed)
  model = model_cls(hf_cfg)
  # Larger random weights than the 0.02 default: sharper logits, so greedy
  # decoding has few near ties.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        p.normal_(0.0, std if "embed" not in name else 1.0)
      elif "bias" in name:
        p.normal_(0.0, 0.05)
      else:
        p.uniform_(0.8, 1.2)
  return model.eval().float()


def batch(cfg: config_lib.ModelConfig, seed: int = 0):
  """Left-padded prompts with three images of different grids."""
  rng = np.random.default_rng(seed)
  m = cfg.vision.merge_unit
  image_grids = grids(cfg)
  n_tok = [int(np.prod(g)) // m for g in image_grids]
  text_hi = cfg.bos_token_id  # ordinary tokens below the special ids

  def text(n):
    return list(rng.integers(0, text_hi, n))

  def image(k):
    return (
      [cfg.vision_start_token_id]
      + [cfg.image_pad_token_id] * n_tok[k]
      + [cfg.vision_end_token_id]
    )

  rows = [
    text(3) + image(0) + text(4) + image(1) + text(2),
    text(5) + image(2) + text(3),
  ]
  t = max(len(r) for r in rows)
  ids = np.full((2, t), cfg.pad_token_id, np.int64)
  mask = np.zeros((2, t), np.int64)
  for i, r in enumerate(rows):
    ids[i, t - len(r) :] = r
    mask[i, t - len(r) :] = 1
  n_patches = int(vision_index.num_patches(image_grids).sum())
  pixels = rng.standard_normal((n_patches, cfg.vision.patch_dim)).astype(
    np.float32
  )
  return ids, mask, pixels, image_grids


def hf_inputs(cfg, ids, mask, pixels, grids):
  if cfg.family == "internvl":
    return dict(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      pixel_values=torch.tensor(
        vision_internvl.tiles_from_rows(pixels, cfg.vision)
      ),
    )
  return dict(
    input_ids=torch.tensor(ids),
    attention_mask=torch.tensor(mask),
    pixel_values=torch.tensor(pixels),
    image_grid_thw=torch.tensor(grids),
    mm_token_type_ids=torch.tensor(
      (ids == cfg.image_pad_token_id).astype(np.int64)
    ),
  )
