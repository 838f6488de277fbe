"""Draws a SynthMed scene as a grayscale scan (uint8, HxW).

Three modality styles a small model can tell apart from pixels:
  ct     sharp edges, dark fat ring, bright bone (spine, ribs), scanner table,
         fine noise;
  mri    bright fat ring, dark bone, dark heart (flow void), a smooth coil
         bias field, Rician-like noise;
  x-ray  a projection: soft edges (blur), bright spine column and ribs laid
         over the organs, a thickness gradient and vignette.
Lesions are round blobs brighter or darker than their organ. Difficulty in
[0, 1] adds noise and texture and lowers contrast, but a lesion always stays
visible. Rendering is a pure function of (scene, size): the noise comes from
the scene's render_seed.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from stepjax.data import synthmed_scene as scene_lib
from stepjax.errors import InputError


def _paint_ellipse(
  img_HxW: np.ndarray,
  cx: float,
  cy: float,
  rx: float,
  ry: float,
  angle: float,
  value: float,
  *,
  alpha: float = 1.0,
  add: bool = False,
) -> None:
  """Blends an anti-aliased filled ellipse into img in place.

  Geometry is in image fractions; only the ellipse's bounding box is
  touched, which keeps a render cheap. add=True adds value instead of
  blending towards it.
  """
  size = img_HxW.shape[0]
  reach = max(rx, ry) + 1.5 / size
  x0, x1 = (
    max(0, int((cx - reach) * size)),
    min(size, int((cx + reach) * size) + 1),
  )
  y0, y1 = (
    max(0, int((cy - reach) * size)),
    min(size, int((cy + reach) * size) + 1),
  )
  if x0 >= x1 or y0 >= y1:
    return
  xs = (np.arange(x0, x1, dtype=np.float32) + 0.5) / size - cx
  ys = (np.arange(y0, y1, dtype=np.float32) + 0.5) / size - cy
  cos, sin = math.cos(angle), math.sin(angle)
  u = xs[None, :] * cos + ys[:, None] * sin
  v = -xs[None, :] * sin + ys[:, None] * cos
  dist = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
  # Soft edge about one pixel wide.
  a = np.clip((1.0 - dist) * (min(rx, ry) * size) + 0.5, 0.0, 1.0) * alpha
  patch = img_HxW[y0:y1, x0:x1]
  if add:
    patch += a * value
  else:
    patch += a * (value - patch)


def _smooth_noise(
  rng: np.random.Generator, size: int, cells: int
) -> np.ndarray:
  """Low-frequency noise in about [-1, 1], HxW, from a cells x cells grid."""
  grid = rng.standard_normal((cells, cells)).astype(np.float32)
  return ndimage.zoom(grid, size / cells, order=1, mode="nearest")[:size, :size]


def _draw_body(
  img: np.ndarray, scene: scene_lib.Scene, tissue: dict[str, float]
) -> None:
  bx, by, brx, bry = scene.body
  if scene.modality == "x-ray":
    # Frontal projection: a tall torso whose middle is thickest.
    _paint_ellipse(img, bx, 0.55, brx + 0.03, 0.55, 0.0, tissue["soft"])
    _paint_ellipse(img, bx, 0.55, brx * 0.6, 0.45, 0.0, 0.06, add=True)
    _paint_ellipse(img, bx, 0.52, 0.035, 0.5, 0.0, 0.25, add=True)
    return
  _paint_ellipse(img, bx, by, brx, bry, 0.0, tissue["fat"])
  _paint_ellipse(img, bx, by, brx * 0.9, bry * 0.87, 0.0, tissue["soft"])
  if scene.modality == "ct":  # the scanner table under the patient
    _paint_ellipse(img, bx, by + bry + 0.07, 0.46, 0.012, 0.0, 0.7)


def _draw_bones(
  img: np.ndarray, scene: scene_lib.Scene, tissue: dict[str, float]
) -> None:
  bx, by, brx, bry = scene.body
  bone = tissue["bone"]
  if scene.modality == "x-ray":
    n_ribs = 6 if scene.region == "chest" else 2
    for k in range(n_ribs):
      y = 0.2 + 0.085 * k
      for side in (-1, 1):
        _paint_ellipse(
          img, bx + side * 0.2, y, 0.17, 0.011, side * 0.3, 0.1, add=True
        )
    return
  spine_y = by + bry * 0.72
  _paint_ellipse(img, bx, spine_y, 0.045, 0.04, 0.0, bone)
  _paint_ellipse(img, bx, spine_y + 0.06, 0.018, 0.03, 0.0, bone)
  # Ribs: short bright arcs just inside the fat ring.
  n_ribs = 10 if scene.region == "chest" else 6
  for k in range(n_ribs):
    t = math.pi * (0.12 + 0.76 * k / (n_ribs - 1))
    for side in (-1, 1):
      x = bx + side * brx * 0.84 * math.sin(t)
      y = by - bry * 0.8 * math.cos(t)
      _paint_ellipse(img, x, y, 0.016, 0.011, side * t, bone)


def render(scene: scene_lib.Scene, image_size: int = 112) -> np.ndarray:
  """Renders the scene as a uint8 HxW image (H = W = image_size)."""
  if image_size < 32:
    raise InputError(
      f"SynthMed image_size must be >= 32 (data.image_size); got {image_size}"
    )
  rng = np.random.default_rng(scene.render_seed)
  d = scene.difficulty
  tissue = scene_lib.TISSUE[scene.modality]
  img = np.full((image_size, image_size), tissue["background"], np.float32)
  _draw_body(img, scene, tissue)

  organ_level = {}
  for organ in scene.organs:
    level = scene_lib.TISSUE[scene.modality][organ.name]
    level += rng.uniform(-0.03, 0.03)
    organ_level[organ.name] = level
    _paint_ellipse(
      img, organ.cx, organ.cy, organ.rx, organ.ry, organ.angle, level
    )
  _draw_bones(img, scene, tissue)

  # Organ texture before lesions, so lesions keep their contrast.
  texture = _smooth_noise(rng, image_size, 12)
  img *= 1.0 + (0.03 + 0.07 * d) * texture

  contrast = 0.3 - 0.12 * d
  for organ in scene.organs:
    for les in organ.lesions:
      sign = 1.0 if les.bright else -1.0
      value = float(np.clip(organ_level[organ.name] + sign * contrast, 0, 1))
      _paint_ellipse(
        img,
        organ.cx + les.dx,
        organ.cy + les.dy,
        les.radius,
        les.radius,
        0.0,
        value,
      )

  if scene.modality == "x-ray":
    img = ndimage.gaussian_filter(img, sigma=0.005 * image_size)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    r2 = ((xx / image_size - 0.5) ** 2 + (yy / image_size - 0.5) ** 2) * 2
    img *= 1.0 - 0.25 * r2
  elif scene.modality == "mri":
    gy, gx = rng.standard_normal(2)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    ramp = gx * (xx / image_size - 0.5) + gy * (yy / image_size - 0.5)
    img *= 1.0 + 0.25 * ramp

  sigma = 0.015 + 0.05 * d
  noise = rng.standard_normal(img.shape).astype(np.float32) * sigma
  if scene.modality == "mri":
    noise2 = rng.standard_normal(img.shape).astype(np.float32) * sigma
    img = np.sqrt((img + noise) ** 2 + noise2**2)
  else:
    img += noise
  # Harder scans have a narrower gray range (a poorer window).
  img = 0.5 + (img - 0.5) * (1.0 - 0.25 * d)
  return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
