"""M-RoPE 3D position ids (host-side numpy), as transformers computes them.

B: batch, T: prompt length, I: images in the batch (in reading order: row
by row, left to right, the same order as `grid_thw_Ix3` and the pixels).
A grid row (0, 0, 0) is an empty image slot: it has no image pad tokens
and is skipped.

Text tokens get the same position on all three axes, counting up. A run of
`<|image_pad|>` tokens gets (t, h, w) grid coordinates of the merged image
offset by the running position; the next text continues at
`offset + max(h, w) / merge`. Left/right padding (attn_mask 0) is skipped and
gets position 0. `deltas_B` = max position + 1 - number of real tokens; a
decode step's position is then `num_real_tokens_so_far + delta` on every
axis (`next_positions`).

InternVL (family internvl) uses 1D positions, as transformers' generate
computes them: each real token's index among the real tokens of its row,
the same on all three rows (plain RoPE), deltas 0.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from stepjax.models import config as config_lib


def _runs(is_image: np.ndarray):
  """(start, end) of each maximal run of True."""
  padded = np.concatenate([[False], is_image, [False]]).astype(np.int8)
  edges = np.flatnonzero(np.diff(padded))
  return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def rope_index(
  input_ids_BxT: np.ndarray,
  attn_mask_BxT: np.ndarray | None,
  grid_thw_Ix3: np.ndarray | None,
  cfg: config_lib.ModelConfig,
) -> tuple[np.ndarray, np.ndarray]:
  """Returns (positions_3xBxT int32, deltas_B int32)."""
  ids = np.asarray(input_ids_BxT)
  b, t = ids.shape
  mask = (
    np.ones_like(ids, bool)
    if attn_mask_BxT is None
    else np.asarray(attn_mask_BxT).astype(bool)
  )
  grids = (
    np.zeros((0, 3), np.int64)
    if grid_thw_Ix3 is None
    else np.asarray(grid_thw_Ix3, np.int64).reshape(-1, 3)
  )
  grids = grids[np.prod(grids, axis=-1) > 0]  # empty image slots
  if cfg.family == "internvl":
    return _positions_1d(ids, mask, grids, cfg)
  merge = cfg.vision.spatial_merge_size
  positions = np.zeros((3, b, t), np.int64)
  deltas = np.zeros((b,), np.int64)
  next_image = 0
  for row in range(b):
    real = np.flatnonzero(mask[row])
    seq = ids[row, real]
    out = np.zeros((3, len(seq)), np.int64)
    cur, prev = 0, 0
    for start, end in _runs(seq == cfg.image_pad_token_id):
      out[:, prev:start] = cur + np.arange(start - prev)
      cur += start - prev
      if next_image >= len(grids):
        raise ValueError(
          f"row {row}: more <|image_pad|> runs than the {len(grids)} "
          "images in grid_thw"
        )
      gt, gh, gw = grids[next_image].tolist()
      gh, gw = gh // merge, gw // merge
      if gt * gh * gw != end - start:
        raise ValueError(
          f"row {row}: image {next_image} has {end - start} <|image_pad|> "
          f"tokens but grid_thw {grids[next_image].tolist()} needs "
          f"{gt * gh * gw}"
        )
      tt, hh, ww = np.meshgrid(
        np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij"
      )
      out[:, start:end] = cur + np.stack(
        [tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)]
      )
      cur += max(gh, gw)
      prev = end
      next_image += 1
    out[:, prev:] = cur + np.arange(len(seq) - prev)
    positions[:, row, real] = out
    deltas[row] = (out.max() + 1 if len(seq) else 0) - len(seq)
  if next_image != len(grids):
    raise ValueError(
      f"grid_thw has {len(grids)} images but the prompts hold "
      f"{next_image} <|image_pad|> runs"
    )
  return positions.astype(np.int32), deltas.astype(np.int32)


def _positions_1d(ids, mask, grids, cfg):
  """1D positions (cumulative count of real tokens - 1) on all 3 rows."""
  want = int(np.prod(grids, axis=-1).sum()) // cfg.vision.merge_unit
  got = int((ids[mask] == cfg.image_pad_token_id).sum())
  if got != want:
    raise ValueError(
      f"the prompts hold {got} image tokens but grid_thw {grids.tolist()} "
      f"needs {want}; build prompts with t*h*w/4 image tokens per image"
    )
  pos = np.where(mask, np.cumsum(mask, axis=1) - 1, 0)
  positions = np.broadcast_to(pos, (3, *pos.shape)).astype(np.int32)
  return positions, np.zeros(ids.shape[0], np.int32)


def next_positions(num_real_B, deltas_B):
  """3xBx1 positions of the next decoded token (jax or numpy inputs).

  num_real_B: real (unpadded) tokens before this one, prompt included.
  """
  pos = jnp.asarray(num_real_B) + jnp.asarray(deltas_B)
  return jnp.broadcast_to(pos[None, :, None], (3, pos.shape[0], 1)).astype(
    jnp.int32
  )
