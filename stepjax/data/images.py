"""Image decoding and per-family preprocessing (resize, normalise, patchify).

`decode_image` turns an `ImageRef` (path, encoded bytes or array) into a
uint8 HxWx3 RGB array; `preprocess` turns that into the vision tower's
input, computing the same numbers as transformers'
`Qwen2VLImageProcessorPil` (bicubic PIL resize to a multiple of
`spec.factor` chosen by `smart_resize`, rescale by 1/255 in float64,
mean/std normalisation in float32, merge-aware patch order).

An `ImageSpec` holds what differs between model families; `image_spec`
picks it for a `ModelConfig`. Both Qwen2.5-VL and Qwen3-VL checkpoints
use transformers' Qwen2-VL image processor, with these settings:
  QWEN2_5_VL: 14-pixel patches (factor 28), OpenAI CLIP mean/std.
  QWEN3_VL:   16-pixel patches (factor 32), mean = std = 0.5.
InternVL (`INTERNVL`, `tile_size` > 0) uses transformers' GotOcr2 image
processor instead: dynamic tiling into 448-pixel tiles (`tiles.py`;
data.max_pixels bounds the pixels of all tiles, thumbnail included, so
its `max_patches` is data.max_pixels // tile_size**2 - 1 (1 below 3
tiles) and `min_patches` data.min_pixels // tile_size**2, at least 1;
InternVL3's default max_patches 12 is data.max_pixels = 13 * 448**2),
each tile normalised
with the ImageNet mean/std and cut into 14-pixel patch rows in the same
merge-block order; grid_thw = (tiles, tile_size / 14, tile_size / 14).
(Their checkpoints' default pixel ranges also differ, 56*56..28*28*16384
and 256*256..4096*4096, but the range here is always the caller's:
`data.min_pixels` / `data.max_pixels`.)

Shapes: H, W image height/width in pixels; N = grid_h * grid_w patches of
p x p pixels (p = spec.patch_size); P = spec.patch_dim = 3 channels *
2 temporal * p * p values per patch (1176 for Qwen2.5-VL, 1536 for
Qwen3-VL; a still image is repeated to fill the temporal patch).

Decoding rules (PNG, JPEG, ... through PIL; DICOM through pydicom):
- EXIF orientation is applied (as transformers' `load_image` does).
- Alpha (RGBA, LA, P with transparency) is composited onto white, as the
  processor's `convert_to_rgb` does; other modes use PIL's `convert("RGB")`.
- 16-bit greyscale keeps the high byte (v >> 8), the rule PIL itself uses for
  16-bit colour PNGs. PIL's `convert("RGB")` would clip every value above 255
  to white, which destroys 16-bit medical images, so that one behaviour of
  transformers is deliberately not reproduced. An explicit `window` applies.
- DICOM: rescale slope/intercept, then the window (explicit, else the file's
  WindowCenter/WindowWidth, else the pixel min/max) with the DICOM linear
  VOI function, MONOCHROME1 inverted; multi-frame files use frame 0.
Every failure raises `BadRecordError` naming the file and the record.
"""

from __future__ import annotations

import dataclasses
import io
import math
import warnings
from collections import abc

import numpy as np
import PIL.Image
import PIL.ImageOps
from etils import epath

from stepjax.data import errors, records, tiles
from stepjax.data.readers import paths
from stepjax.errors import InputError

# Qwen2.5-VL's settings, kept as names for older callers (= QWEN2_5_VL).
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # resized sides are multiples of this
PATCH_DIM = 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE  # P = 1176
MAX_ASPECT_RATIO = 200
# OpenAI CLIP statistics, as used by the Qwen2-VL image processor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Qwen3-VL's checkpoints normalise to [-1, 1] instead.
HALF = (0.5, 0.5, 0.5)
# InternVL's: ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Decoded-size guard against decompression bombs (about 8k x 8k).
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000

_DICOM_SUFFIXES = (".dcm", ".dicom")
_CHANNELS = 3  # decode_image always gives RGB


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """How a model family cuts an RGB image into patch rows.

  The settings transformers' Qwen2-VL image processor takes: square
  `patch_size` patches, `merge_size` x `merge_size` patches merged into one
  language-model token, `temporal_patch_size` frames per patch (a still
  image is repeated), and the per-channel `mean` / `std` applied after
  scaling pixels to [0, 1]. `tile_size` > 0: InternVL's dynamic tiling
  into square tiles of that many pixels instead of `smart_resize`.
  """

  patch_size: int
  temporal_patch_size: int
  merge_size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  tile_size: int = 0

  @property
  def factor(self) -> int:
    """Resized image sides are multiples of this (patch * merge)."""
    return self.patch_size * self.merge_size

  @property
  def patch_dim(self) -> int:
    """P: values in one patch row (C * T * p * p)."""
    return _CHANNELS * self.temporal_patch_size * self.patch_size**2

  def image_tokens(self, num_patches: int) -> int:
    """Image pad tokens of an image with `num_patches` patch rows (one per
    merged merge x merge block)."""
    return int(num_patches) // self.merge_size**2


QWEN2_5_VL = ImageSpec(
  PATCH_SIZE, TEMPORAL_PATCH_SIZE, MERGE_SIZE, CLIP_MEAN, CLIP_STD
)
QWEN3_VL = ImageSpec(16, 2, 2, HALF, HALF)
INTERNVL = ImageSpec(14, 1, 2, IMAGENET_MEAN, IMAGENET_STD, tile_size=448)
_FAMILY_SPECS = {
  "qwen2_5_vl": QWEN2_5_VL,
  "qwen3_vl": QWEN3_VL,
  "internvl": INTERNVL,
}


def image_spec(model_cfg) -> ImageSpec:
  """The `ImageSpec` for a `models.config.ModelConfig`.

  Patch, temporal patch and merge sizes (and InternViT's tile size) come
  from `model_cfg.vision` (so a checkpoint's own sizes win); mean and std
  from `model_cfg.family`.

  Raises:
    InputError: an unknown family, or a vision tower that does not take
      3-channel images.
  """
  family = model_cfg.family
  if family not in _FAMILY_SPECS:
    raise InputError(
      f"ModelConfig.family={family!r} has no image preprocessing; expected "
      f"one of {sorted(_FAMILY_SPECS)} (set family, or add the family's "
      "ImageSpec in stepjax/data/images.py)"
    )
  v = model_cfg.vision
  if v.in_channels != _CHANNELS:
    raise InputError(
      f"ModelConfig.vision.in_channels={v.in_channels}, but images are "
      f"decoded to {_CHANNELS} (RGB) channels; set vision.in_channels=3"
    )
  return dataclasses.replace(
    _FAMILY_SPECS[family],
    patch_size=int(v.patch_size),
    temporal_patch_size=int(v.temporal_patch_size),
    merge_size=int(v.spatial_merge_size),
    tile_size=int(v.image_size),
  )


def _bad(reason: str, ref_desc: str, record_id: str) -> errors.BadRecordError:
  return errors.BadRecordError(reason, file=ref_desc, record=record_id)


def resolve_path(
  path: str, root: str = "", record_id: str = "", *, origin: str = ""
) -> str:
  """`path` checked against `root` by the one path policy, as a string.

  With a `root`, `path` (relative to it, or absolute) must resolve, through
  symlinks and `..`, under it (`readers.paths.inside_root`); otherwise it
  raises `PathOutsideRootError` naming `origin` (the data file and row;
  else the path) and the record. Without a root the path is used as given:
  the readers have already checked the paths of their records.
  """
  if not path:
    raise _bad("empty image path", origin or "<empty>", record_id)
  if not root:
    return path
  resolved = paths.inside_root(
    root, path, file=origin or path, record=record_id
  )
  return str(resolved)


def _read_bytes(path: str, record_id: str) -> bytes:
  try:
    return epath.Path(path).read_bytes()
  except FileNotFoundError:
    raise _bad("image file not found", path, record_id) from None
  except IsADirectoryError:
    raise _bad("image path is a directory", path, record_id) from None
  except OSError as e:
    raise _bad(f"cannot read image file: {e}", path, record_id) from None


def _check_pixels(count: int, limit: int, desc: str, record_id: str) -> None:
  if limit and count > limit:
    raise _bad(
      f"image has {count} pixels, over the limit of {limit} "
      "(decompression-bomb guard); raise max_image_pixels if the image is "
      "genuine",
      desc,
      record_id,
    )


def _window_to_uint8(
  values: np.ndarray, center: float, width: float
) -> np.ndarray:
  """DICOM PS3.3 C.11.2.1.2 linear VOI function, output 0..255."""
  values = values.astype(np.float64)
  if width <= 1:
    return np.where(values <= center - 0.5, 0, 255).astype(np.uint8)
  scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
  return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _first_number(value) -> float:
  """WindowCenter/Width may be multi-valued; the first is the default."""
  if isinstance(value, abc.Sequence) and not isinstance(value, (str, bytes)):
    value = value[0]
  return float(value)


def _decode_dicom(
  data: bytes,
  desc: str,
  record_id: str,
  max_image_pixels: int,
  window: tuple[float, float] | None,
  force: bool,
) -> np.ndarray:
  import pydicom  # Imported lazily: only DICOM users pay for it.
  from pydicom import pixels

  try:
    ds = pydicom.dcmread(io.BytesIO(data), force=force)
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
  except Exception as e:  # pydicom raises many types for bad files.
    raise _bad(f"cannot parse DICOM file: {e}", desc, record_id) from None
  _check_pixels(rows * cols * frames, max_image_pixels, desc, record_id)
  try:
    arr = ds.pixel_array
  except Exception as e:
    raise _bad(
      f"cannot decode DICOM pixel data ({e}); compressed transfer syntaxes "
      "need pydicom's optional decoders (e.g. pylibjpeg)",
      desc,
      record_id,
    ) from None
  samples = int(ds.get("SamplesPerPixel", 1) or 1)
  if frames > 1:
    arr = arr[0]
  if samples == 3:
    if arr.dtype == np.uint8:
      return np.ascontiguousarray(arr)
    hi = float(arr.max()) or 1.0
    return np.clip(np.round(arr * (255.0 / hi)), 0, 255).astype(np.uint8)
  values = pixels.apply_rescale(arr, ds).astype(np.float64)
  if window is not None:
    center, width = window
  elif "WindowCenter" in ds and "WindowWidth" in ds:
    center = _first_number(ds.WindowCenter)
    width = _first_number(ds.WindowWidth)
  else:
    lo, hi = float(values.min()), float(values.max())
    # min/max as a linear window: lo -> 0, hi -> 255.
    width = max(hi - lo + 1.0, 2.0)
    center = lo + (width - 1.0) / 2.0 + 0.5
  grey = _window_to_uint8(values, center, width)
  if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
    grey = 255 - grey
  return np.repeat(grey[..., None], 3, axis=-1)


def _high_bits_to_uint8(
  values: np.ndarray, window: tuple[float, float] | None
) -> np.ndarray:
  if window is not None:
    return _window_to_uint8(values, *window)
  return (np.clip(values, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)


def _pil_to_rgb(image: PIL.Image.Image, window) -> np.ndarray:
  """Mode conversion matching the processor's `convert_to_rgb`."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
    grey = _high_bits_to_uint8(np.asarray(image), window)
    return np.repeat(grey[..., None], 3, axis=-1)
  if image.mode == "F":
    values = np.asarray(image, dtype=np.float64)
    if window is None:
      lo, hi = float(values.min()), float(values.max())
      window = (lo + (hi - lo) / 2.0 + 0.5, max(hi - lo + 1.0, 2.0))
    grey = _window_to_uint8(values, *window)
    return np.repeat(grey[..., None], 3, axis=-1)
  has_alpha = (
    "A" in image.getbands() or image.info.get("transparency") is not None
  )
  if has_alpha:
    rgba = image.convert("RGBA")
    white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = PIL.Image.alpha_composite(white, rgba)
  return np.asarray(image.convert("RGB"))


def _decode_pil(
  data: bytes,
  desc: str,
  record_id: str,
  max_image_pixels: int,
  window: tuple[float, float] | None,
) -> np.ndarray:
  try:
    with warnings.catch_warnings():
      # Our own limit replaces PIL's global warning threshold.
      warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
      image = PIL.Image.open(io.BytesIO(data))
      width, height = image.size
      _check_pixels(width * height, max_image_pixels, desc, record_id)
      image.load()
      image = PIL.ImageOps.exif_transpose(image)
      return _pil_to_rgb(image, window)
  except errors.BadRecordError:
    raise
  except PIL.Image.DecompressionBombError as e:
    raise _bad(
      f"{e} (PIL's own limit; raise PIL.Image.MAX_IMAGE_PIXELS too)",
      desc,
      record_id,
    ) from None
  except PIL.UnidentifiedImageError:
    raise _bad(
      "not an image PIL can identify (wrong extension, or a corrupt or "
      "non-image file)",
      desc,
      record_id,
    ) from None
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise _bad(f"corrupt or truncated image: {e}", desc, record_id) from None


def _array_to_rgb(array: np.ndarray, desc: str, record_id: str) -> np.ndarray:
  """Array conversion matching the processor's numpy `convert_to_rgb`."""
  if array.dtype != np.uint8:
    raise _bad(f"image array must be uint8, got {array.dtype}", desc, record_id)
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise _bad(
      f"image array must be HxW or HxWx{{1,3,4}}, got {array.shape}",
      desc,
      record_id,
    )
  if array.shape[-1] == 1:
    return np.repeat(array, 3, axis=-1)
  if array.shape[-1] == 4:
    alpha = array[..., 3:4] / 255
    blend = alpha * array[..., :3] + (1 - alpha) * 255
    return np.round(blend).astype(np.uint8)
  return np.ascontiguousarray(array)


def decode_image(
  ref: records.ImageRef,
  root: str = "",
  *,
  record_id: str = "",
  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
  window: tuple[float, float] | None = None,
  origin: str = "",
) -> np.ndarray:
  """Decodes `ref` into a uint8 HxWx3 RGB array.

  Args:
    ref: the image; with a `root`, `ref.path` (relative to it, or
      absolute) must resolve under it, symlinks included
      (`resolve_path`). Paths may be local or gs:// (read through
      etils.epath).
    root: the data root paths are resolved against ("" = as given).
    record_id: named in errors together with the file.
    max_image_pixels: refuse images with more decoded pixels than this
      (0 = no limit), checked from the header before decoding.
    window: (center, width) for DICOM / 16-bit images; overrides the file.
    origin: the data file and row of the record, named when its path
      leaves `root`.

  Raises:
    BadRecordError: missing, unreadable, corrupt, non-image or too large;
      `PathOutsideRootError` (a subclass) for a path leaving `root`. The
      message names the file and record.
  """
  if ref.array is not None:
    desc = ref.describe()
    if ref.array.ndim < 2 or 0 in ref.array.shape[:2]:
      raise _bad(f"empty image array {ref.array.shape}", desc, record_id)
    h, w = ref.array.shape[:2]
    _check_pixels(h * w, max_image_pixels, desc, record_id)
    return _array_to_rgb(ref.array, desc, record_id)
  if ref.path is not None:
    path = resolve_path(ref.path, root, record_id, origin=origin)
    desc = path
    data = _read_bytes(path, record_id)
    force_dicom = path.lower().endswith(_DICOM_SUFFIXES)
  else:
    desc = ref.describe()
    data = ref.data
    force_dicom = False
  if not data:
    raise _bad("image file is empty", desc, record_id)
  if data[128:132] == b"DICM" or force_dicom:
    return _decode_dicom(
      data, desc, record_id, max_image_pixels, window, force_dicom
    )
  return _decode_pil(data, desc, record_id, max_image_pixels, window)


def encoded_for_judge(ref: records.ImageRef | None) -> bytes | str | None:
  """A record's image as an LLM judge takes it: a path or encoded bytes as
  the record holds them; a decoded array (SynthMed) as PNG bytes."""
  if ref is None:
    return None
  if ref.path is not None:
    return str(ref.path)
  if ref.data is not None:
    return ref.data
  buf = io.BytesIO()
  PIL.Image.fromarray(np.asarray(ref.array, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def smart_resize(
  height: int,
  width: int,
  *,
  min_pixels: int,
  max_pixels: int,
  spec: ImageSpec = QWEN2_5_VL,
  factor: int | None = None,
) -> tuple[int, int]:
  """The Qwen2-VL target size: sides multiples of `factor`, area in range.

  Sides are rounded to the nearest multiple of `factor` (default
  `spec.factor`); if the area is above `max_pixels` (below `min_pixels`)
  both sides are scaled down (up) by the same ratio and floored (ceiled) to
  multiples of `factor`, keeping the aspect ratio as well as the grid
  allows.
  """
  factor = factor or spec.factor
  if height <= 0 or width <= 0:
    raise ValueError(f"image size must be positive, got {height}x{width}")
  ratio = max(height, width) / min(height, width)
  if ratio > MAX_ASPECT_RATIO:
    raise ValueError(
      f"aspect ratio {ratio:.1f} of a {height}x{width} image is above "
      f"{MAX_ASPECT_RATIO}, which Qwen2-VL does not accept"
    )
  new_h = round(height / factor) * factor
  new_w = round(width / factor) * factor
  if new_h * new_w > max_pixels:
    scale = math.sqrt(height * width / max_pixels)
    new_h = max(factor, math.floor(height / scale / factor) * factor)
    new_w = max(factor, math.floor(width / scale / factor) * factor)
  elif new_h * new_w < min_pixels:
    scale = math.sqrt(min_pixels / (height * width))
    new_h = math.ceil(height * scale / factor) * factor
    new_w = math.ceil(width * scale / factor) * factor
  return new_h, new_w


def grid_for_size(
  height: int,
  width: int,
  *,
  min_pixels: int,
  max_pixels: int,
  spec: ImageSpec = QWEN2_5_VL,
) -> tuple[int, int, int]:
  """(t, h, w) patch grid an HxW image gets, without touching pixels."""
  if spec.tile_size:
    side = spec.tile_size // spec.patch_size
    limits = tile_limits(spec, min_pixels, max_pixels)
    count = tiles.tile_count(height, width, spec.tile_size, *limits)
    return count, side, side
  new_h, new_w = smart_resize(
    height, width, min_pixels=min_pixels, max_pixels=max_pixels, spec=spec
  )
  return 1, new_h // spec.patch_size, new_w // spec.patch_size


def patchify(
  image_HxWxC: np.ndarray, *, spec: ImageSpec = QWEN2_5_VL
) -> np.ndarray:
  """Cuts a normalised image into merge-ordered patch rows `pixels_NxP`.

  Rows go over m x m merge blocks (m = spec.merge_size) in raster order,
  and within a block over its patches in raster order, so every m*m
  consecutive rows form one merged token. Each row is laid out (C, T, p, p)
  with the frame repeated over the T = spec.temporal_patch_size slots.
  H and W must be multiples of `spec.factor`.
  """
  h, w, c = image_HxWxC.shape
  m, p, t = spec.merge_size, spec.patch_size, spec.temporal_patch_size
  if h % spec.factor or w % spec.factor:
    raise ValueError(
      f"patchify needs sides that are multiples of {spec.factor}, got "
      f"{h}x{w}; resize with smart_resize first"
    )
  gh, gw = h // p, w // p
  x = image_HxWxC.reshape(gh // m, m, p, gw // m, m, p, c)
  # -> (block_row, block_col, row_in_block, col_in_block, C, py, px)
  x = x.transpose(0, 3, 1, 4, 6, 2, 5)
  x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))
  return x.reshape(gh * gw, c * t * p * p)


def tile_limits(
  spec: ImageSpec, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
  """(min_patches, max_patches) of InternVL's tiling for a pixel range.

  max_pixels bounds all tiles the tower sees, thumbnail included: a budget
  of b >= 3 tiles gives max_patches b - 1 (plus the thumbnail), smaller
  budgets one tile.
  """
  area = spec.tile_size**2
  budget = max_pixels // area
  most = budget - 1 if budget >= 3 else 1
  return min(max(1, min_pixels // area), most), most


def _normalise(image_HxWx3: np.ndarray, spec: ImageSpec) -> np.ndarray:
  # Rescale in float64 and cast, then normalise in float32: the processor's
  # exact order of operations, so results match bit for bit.
  x = (np.asarray(image_HxWx3).astype(np.float64) * (1 / 255)).astype(
    np.float32
  )
  mean = np.asarray(spec.mean, dtype=np.float32)
  std = np.asarray(spec.std, dtype=np.float32)
  return (x - mean) / std


def _preprocess_tiles(image_HxWx3, min_pixels, max_pixels, spec):
  limits = tile_limits(spec, min_pixels, max_pixels)
  cut = tiles.cut(image_HxWx3, spec.tile_size, *limits)
  rows = [patchify(_normalise(t, spec), spec=spec) for t in cut]
  side = spec.tile_size // spec.patch_size
  grid_thw = np.asarray((len(cut), side, side), dtype=np.int32)
  return np.ascontiguousarray(np.concatenate(rows), np.float32), grid_thw


def preprocess(
  image_HxWx3: np.ndarray,
  *,
  min_pixels: int,
  max_pixels: int,
  spec: ImageSpec = QWEN2_5_VL,
) -> tuple[np.ndarray, np.ndarray]:
  """Resizes, normalises and patchifies one uint8 RGB image for `spec`.

  Returns:
    pixels_NxP: float32 patch rows (N = grid_h * grid_w, P = spec.patch_dim).
    grid_thw: int32 (3,) = (1, grid_h, grid_w) in spec.patch_size patches;
      with tiles (t, s, s): t tiles of s x s patches, tile after tile.

  Raises:
    ValueError: the aspect ratio is above 200 (callers turn this into a
      BadRecordError naming the record).
  """
  if spec.tile_size:
    return _preprocess_tiles(image_HxWx3, min_pixels, max_pixels, spec)
  height, width = image_HxWx3.shape[:2]
  new_h, new_w = smart_resize(
    height, width, min_pixels=min_pixels, max_pixels=max_pixels, spec=spec
  )
  # Always go through PIL (even at the same size), as the processor does.
  resized = PIL.Image.fromarray(image_HxWx3).resize(
    (new_w, new_h), resample=PIL.Image.Resampling.BICUBIC
  )
  pixels_NxP = patchify(_normalise(resized, spec), spec=spec)
  p = spec.patch_size
  grid_thw = np.asarray((1, new_h // p, new_w // p), dtype=np.int32)
  return np.ascontiguousarray(pixels_NxP, dtype=np.float32), grid_thw
