"""InternVL's dynamic tiling of an image (host side, uint8 in and out).

As transformers' GotOcr2 image processor (used by InternVL's processor
with `crop_to_patches`): among the grids of c columns x r rows with
min_tiles <= c*r <= max_tiles, take the one whose aspect ratio c / r is
closest to the image's width / height (grids ordered by tile count, then
columns; on an exact tie a later grid wins while the image's area is
above half of the grid's), resize the whole image to c x r tiles
(bicubic, PIL), cut the tiles row by row, and append the image resized to
one tile (the thumbnail) when there is more than one tile.
"""

from __future__ import annotations

import numpy as np
import PIL.Image


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
  """(columns, rows) with min_tiles <= columns * rows <= max_tiles, by tile
  count (stable, so columns-major within a count)."""
  grids = [
    (c, r)
    for c in range(1, max_tiles + 1)
    for r in range(1, max_tiles + 1)
    if min_tiles <= c * r <= max_tiles
  ]
  return sorted(grids, key=lambda g: g[0] * g[1])


def best_grid(
  height: int, width: int, tile: int, min_tiles: int, max_tiles: int
) -> tuple[int, int]:
  """(columns, rows) of tiles for an image of height x width pixels."""
  aspect = width / height
  best, best_diff = (1, 1), float("inf")
  for c, r in candidate_grids(min_tiles, max_tiles):
    diff = abs(aspect - c / r)
    if diff < best_diff:
      best, best_diff = (c, r), diff
    elif diff == best_diff and height * width > 0.5 * tile * tile * c * r:
      best = (c, r)
  return best


def tile_count(
  height: int, width: int, tile: int, min_tiles: int, max_tiles: int
) -> int:
  """Tiles an image gets, thumbnail included."""
  if max_tiles <= 1:
    return 1
  c, r = best_grid(height, width, tile, min_tiles, max_tiles)
  return c * r + (c * r > 1)


def _resize(image_HxWx3: np.ndarray, height: int, width: int) -> np.ndarray:
  resized = PIL.Image.fromarray(image_HxWx3).resize(
    (width, height), resample=PIL.Image.Resampling.BICUBIC
  )
  return np.asarray(resized)


def cut(
  image_HxWx3: np.ndarray, tile: int, min_tiles: int, max_tiles: int
) -> list[np.ndarray]:
  """The tile x tile x 3 uint8 tiles of an image, thumbnail last."""
  height, width = image_HxWx3.shape[:2]
  if max_tiles <= 1:
    return [_resize(image_HxWx3, tile, tile)]
  c, r = best_grid(height, width, tile, min_tiles, max_tiles)
  canvas = _resize(image_HxWx3, r * tile, c * tile)
  tiles = [
    canvas[i * tile : (i + 1) * tile, j * tile : (j + 1) * tile]
    for i in range(r)
    for j in range(c)
  ]
  if len(tiles) > 1:
    tiles.append(_resize(image_HxWx3, tile, tile))
  return tiles
