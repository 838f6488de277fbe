"""Host-side (numpy) metadata for the vision tower in fixed padded shapes.

Shapes: I images, N patch rows per image (a bucket; image i uses its first
n_i = t*h*w rows, the rest are padding), P = C*Tp*p*p patch row length,
M = N / merge_unit merged tokens per image, L = (window_size / patch_size)^2
patch rows of one whole attention window, W = `window_slots(N)` window
slots of L rows per image.

Transformers runs the vision tower on one ragged sequence: it reorders the
patches window by window (`window_index`) and restricts attention with
`cu_seqlens` (whole frames on full-attention blocks, windows elsewhere).
Here each image is a row of a batch and the same reordering is a per-image
permutation. Full-attention blocks compare frame ids in a dense N x N mask.
Window blocks attend inside W slots of L rows: every window (L rows, or
fewer at the right / bottom edges) is gathered into a slot, ragged edge
windows pad their slot and small ones share one (first fit, largest
first; a segment id per slot row keeps windows apart), so attention costs
W x L x L instead of N x N. Any packing in which no two slots could be
merged uses fewer than 2 n / L + 1 slots for n real rows, so
W = ceil(2 N / L) holds every grid of at most N patches: static per N.
Without window attention (`window_size` 0, Qwen3-VL) each frame is one
window: the order is the patch order and the slot arrays are 1 x 1
placeholders. With a learned position grid (`num_position_embeddings`,
Qwen3-VL) each row also gets the 4 bilinear taps into the grid and their
weights (transformers' align-corners resampling of the square grid to the
image's h x w patches); without one those arrays are zeros.
`vision_metadata` computes all grid-dependent arrays so that the jitted
forward only sees static shapes.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import numpy as np

from stepjax.models import config as config_lib

PAD_SEGMENT = -1


@flax.struct.dataclass
class VisionMeta:
  """Grid-dependent index arrays (numpy or jax) for `I` images of N rows.

  perm_IxN: source patch row for each position in window order.
  full_seg_IxN: frame id per window-ordered position for full-attention
    blocks (PAD_SEGMENT on padding rows).
  slot_rows_IxWxL: window-ordered row gathered into each window-slot row
    (0 on unused slot rows).
  slot_seg_IxWxL: window id of each window-slot row (PAD_SEGMENT unused).
  row_slot_IxN: flat slot row (w * L + l) holding each window-ordered row
    (0 for padding rows, whose values are never used).
  pos_IxNx2: (h, w) rotary coordinates per window-ordered position.
  unperm_IxM: window-ordered merged token feeding each output token.
  valid_IxM: which merged output tokens are real.
  interp_idx_IxNx4: rows of the learned position grid (flattened) that
    each window-ordered position interpolates (0 without a grid).
  interp_w_IxNx4: their bilinear weights (float32; 0 without a grid or on
    padding rows).
  """

  perm_IxN: jax.Array
  full_seg_IxN: jax.Array
  slot_rows_IxWxL: jax.Array
  slot_seg_IxWxL: jax.Array
  row_slot_IxN: jax.Array
  pos_IxNx2: jax.Array
  unperm_IxM: jax.Array
  valid_IxM: jax.Array
  interp_idx_IxNx4: jax.Array
  interp_w_IxNx4: jax.Array


def num_patches(grid_thw_Ix3: np.ndarray) -> np.ndarray:
  return np.prod(np.asarray(grid_thw_Ix3, np.int64), axis=-1)


def window_rows(vcfg: config_lib.VisionConfig) -> int:
  """L: patch rows of one whole attention window (1 without windows)."""
  if not vcfg.window_size:
    return 1
  return (vcfg.window_size // vcfg.patch_size) ** 2


def window_slots(n_rows: int, vcfg: config_lib.VisionConfig) -> int:
  """W: window slots per image for a bucket of `n_rows` patch rows."""
  if not vcfg.window_size:
    return 1
  return max(1, -(-2 * n_rows // window_rows(vcfg)))


def _axis_taps(index: np.ndarray, size: int, side: int):
  """Two taps into a `side`-long axis and their weights for positions
  `index` of a `size`-long one (align corners: ends map to ends)."""
  src = index.astype(np.float32) * np.float32(side - 1)
  src = src / np.float32(max(size - 1, 1))
  low = np.floor(src)
  taps = low.astype(np.int64)[:, None] + np.arange(2)
  weights = 1 - np.abs(src[:, None] - low[:, None] - np.arange(2))
  return np.clip(taps, 0, side - 1), np.maximum(weights, 0).astype(np.float32)


def _grid_taps(hpos, wpos, h: int, w: int, vcfg):
  """(idx_Rx4, w_Rx4): bilinear taps into the learned position grid."""
  side = math.isqrt(vcfg.num_position_embeddings)
  h_taps, h_w = _axis_taps(hpos, h, side)
  w_taps, w_w = _axis_taps(wpos, w, side)
  idx = h_taps[:, :, None] * side + w_taps[:, None, :]
  weight = h_w[:, :, None] * w_w[:, None, :]
  return idx.reshape(-1, 4), weight.reshape(-1, 4)


def _pack_windows(sizes, slot_len: int, num_slots: int):
  """First fit, largest first: (slot, offset) per window of `sizes` rows."""
  free = []  # free rows per opened slot
  where = [None] * len(sizes)
  for j in sorted(range(len(sizes)), key=lambda j: -sizes[j]):
    fits = (k for k, room in enumerate(free) if room >= sizes[j])
    slot = next(fits, len(free))
    if slot == len(free):
      free.append(slot_len)
    where[j] = (slot, slot_len - free[slot])
    free[slot] -= sizes[j]
  if len(free) > num_slots:  # cannot happen: see the module docstring
    raise AssertionError(f"{len(free)} window slots > {num_slots}")
  return where


def _check_grid(grid_thw, n_rows: int, vcfg: config_lib.VisionConfig):
  m = vcfg.spatial_merge_size
  for i, (t, h, w) in enumerate(np.asarray(grid_thw).tolist()):
    if (t, h, w) == (0, 0, 0):  # an empty image slot
      continue
    if t < 1 or h % m or w % m or h < m or w < m:
      raise ValueError(
        f"image {i}: grid_thw {(t, h, w)} needs t >= 1 and h, w positive "
        f"multiples of spatial_merge_size {m}"
      )
    side = vcfg.image_size // vcfg.patch_size
    if vcfg.image_size and (h, w) != (side, side):
      raise ValueError(
        f"image {i}: grid_thw {(t, h, w)} must be (tiles, {side}, {side}): "
        f"InternViT takes {vcfg.image_size}-pixel tiles"
      )
    if t * h * w > n_rows:
      raise ValueError(
        f"image {i}: grid_thw {(t, h, w)} has {t * h * w} patches, more "
        f"than the padded bucket N={n_rows}; use a larger num_patches"
      )
  if n_rows % vcfg.merge_unit:
    raise ValueError(f"N={n_rows} must divide by {vcfg.merge_unit}")


def _one_image(t, h, w, n_rows, vcfg):
  """Metadata of one image, following transformers' vision_utils maths."""
  m = vcfg.spatial_merge_size
  unit = vcfg.merge_unit
  gh, gw = h // m, w // m  # merged grid
  # Window side in merged units; without windows a frame is one window.
  win = vcfg.window_size // m // vcfg.patch_size or max(gh, gw)
  nwh, nww = -(-gh // win), -(-gw // win)
  units = t * gh * gw
  # Merged unit u = (f, bh, bw) -> window (f, bh // win, bw // win).
  f, bh, bw = np.meshgrid(
    np.arange(t), np.arange(gh), np.arange(gw), indexing="ij"
  )
  window_of_unit = ((f * nwh + bh // win) * nww + bw // win).reshape(-1)
  # Window order: by window, then row-major inside the window (stable).
  window_index = np.argsort(window_of_unit, kind="stable")
  n = units * unit
  perm = np.arange(n_rows)
  perm[:n] = (window_index[:, None] * unit + np.arange(unit)).reshape(-1)
  # Windows are contiguous runs of window-ordered rows: gather each run
  # into its slot.
  slot_len = window_rows(vcfg)
  num_slots = window_slots(n_rows, vcfg)
  windows, counts = np.unique(window_of_unit, return_counts=True)
  sizes = (counts * unit).tolist()
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
  slot_rows = np.zeros((num_slots, slot_len), np.int64)
  slot_seg = np.full((num_slots, slot_len), PAD_SEGMENT)
  row_slot = np.zeros(n_rows, np.int64)
  packing = (
    _pack_windows(sizes, slot_len, num_slots) if vcfg.window_size else []
  )
  for j, (slot, off) in enumerate(packing):
    size, start = sizes[j], starts[j]
    slot_rows[slot, off : off + size] = np.arange(start, start + size)
    slot_seg[slot, off : off + size] = windows[j]
    row_slot[start : start + size] = slot * slot_len + off + np.arange(size)
  full_seg = np.full(n_rows, PAD_SEGMENT)
  full_seg[:n] = np.repeat(window_index // (gh * gw), unit)
  # Patch rows come block-major: (frame, bh, bw, ih, iw).
  ih, iw = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
  hpos = (bh[..., None, None] * m + ih).reshape(-1)
  wpos = (bw[..., None, None] * m + iw).reshape(-1)
  pos = np.zeros((n_rows, 2), np.int64)
  pos[:n, 0] = hpos[perm[:n]]
  pos[:n, 1] = wpos[perm[:n]]
  m_rows = n_rows // unit
  unperm = np.arange(m_rows)
  unperm[:units] = np.argsort(window_index)
  valid = np.arange(m_rows) < units
  interp_idx = np.zeros((n_rows, 4), np.int64)
  interp_w = np.zeros((n_rows, 4), np.float32)
  if vcfg.num_position_embeddings:
    interp_idx[:n], interp_w[:n] = _grid_taps(pos[:n, 0], pos[:n, 1], h, w,
                                              vcfg)  # fmt: skip
  return (perm, full_seg, slot_rows, slot_seg, row_slot, pos, unperm, valid,
          interp_idx, interp_w)  # fmt: skip


def _empty_image(n_rows, vcfg):
  """Metadata of an empty image slot: every row is padding, no token is
  valid (so the slot gives the decoder no features)."""
  m_rows = n_rows // vcfg.merge_unit
  num_slots, slot_len = window_slots(n_rows, vcfg), window_rows(vcfg)
  return (
    np.arange(n_rows), np.full(n_rows, PAD_SEGMENT),
    np.zeros((num_slots, slot_len), np.int64),
    np.full((num_slots, slot_len), PAD_SEGMENT), np.zeros(n_rows, np.int64),
    np.zeros((n_rows, 2), np.int64), np.arange(m_rows),
    np.zeros(m_rows, bool), np.zeros((n_rows, 4), np.int64),
    np.zeros((n_rows, 4), np.float32),
  )  # fmt: skip


def vision_metadata(
  grid_thw_Ix3: np.ndarray, n_rows: int, vcfg: config_lib.VisionConfig
) -> VisionMeta:
  """Index arrays for images padded to `n_rows` patch rows each (numpy).

  A grid row (0, 0, 0) is an empty image slot (`stepjax/image_slots.py`):
  all its rows are padding and none of its tokens is valid.
  """
  grid = np.asarray(grid_thw_Ix3, np.int64).reshape(-1, 3)
  _check_grid(grid, n_rows, vcfg)
  parts = [
    _one_image(t, h, w, n_rows, vcfg)
    if t * h * w
    else _empty_image(n_rows, vcfg)
    for t, h, w in grid.tolist()
  ]
  cols = list(zip(*parts))
  return VisionMeta(
    perm_IxN=np.stack(cols[0]).astype(np.int32),
    full_seg_IxN=np.stack(cols[1]).astype(np.int32),
    slot_rows_IxWxL=np.stack(cols[2]).astype(np.int32),
    slot_seg_IxWxL=np.stack(cols[3]).astype(np.int32),
    row_slot_IxN=np.stack(cols[4]).astype(np.int32),
    pos_IxNx2=np.stack(cols[5]).astype(np.int32),
    unperm_IxM=np.stack(cols[6]).astype(np.int32),
    valid_IxM=np.stack(cols[7]),
    interp_idx_IxNx4=np.stack(cols[8]).astype(np.int32),
    interp_w_IxNx4=np.stack(cols[9]),
  )


def bucket_rows(grid_thw_Ix3: np.ndarray, multiple: int = 64) -> int:
  """Smallest multiple of `multiple` holding the largest image's patches."""
  n = int(num_patches(grid_thw_Ix3).max())
  return -(-n // multiple) * multiple


def pad_pixels(
  pixel_values_SxP: np.ndarray, grid_thw_Ix3: np.ndarray, n_rows: int
) -> np.ndarray:
  """transformers' flat `pixel_values` (all images' rows concatenated) ->
  pixels_IxNxP, zero padded."""
  counts = num_patches(grid_thw_Ix3)
  if counts.sum() != pixel_values_SxP.shape[0]:
    raise ValueError(
      f"pixel_values has {pixel_values_SxP.shape[0]} rows but grid_thw "
      f"describes {counts.sum()} patches"
    )
  out = np.zeros(
    (len(counts), n_rows, pixel_values_SxP.shape[1]), pixel_values_SxP.dtype
  )
  start = 0
  for i, c in enumerate(counts.tolist()):
    if c > n_rows:
      raise ValueError(f"image {i} has {c} patches > bucket N={n_rows}")
    out[i, :c] = pixel_values_SxP[start : start + c]
    start += c
  return out
