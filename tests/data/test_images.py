"""Image decoding and preprocessing: parity with Qwen2VLImageProcessorPil."""

import io
import struct
import zlib

import numpy as np
import PIL.Image
import PIL.ImageOps
import pydicom
import pytest
from pydicom import data as dicom_data
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf

from stepjax.data import errors, images, records

MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 64  # small enough for big images to hit it


@pytest.fixture(scope="module")
def processor():
  return hf.Qwen2VLImageProcessorPil(
    min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
  )


def _ours(path, **kwargs):
  image = images.decode_image(records.ImageRef(path=str(path)), **kwargs)
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  return images.preprocess(image, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)


def _check_parity(processor, theirs_input, ours):
  theirs = processor(images=theirs_input, return_tensors="np")
  pixels_NxP, grid_thw = ours
  assert pixels_NxP.dtype == np.float32
  assert pixels_NxP.shape[1] == images.PATCH_DIM
  np.testing.assert_array_equal(grid_thw, theirs["image_grid_thw"][0])
  assert pixels_NxP.shape == theirs["pixel_values"].shape
  assert np.abs(pixels_NxP - theirs["pixel_values"]).max() <= 1e-6


def _png16(values_HxWxC: np.ndarray) -> bytes:
  """A 16-bit PNG written by hand (PIL cannot write 16-bit colour)."""
  h, w, c = values_HxWxC.shape
  colour_type = {1: 0, 3: 2, 4: 6}[c]
  raw = b"".join(
    b"\x00" + values_HxWxC[y].astype(">u2").tobytes() for y in range(h)
  )

  def chunk(tag, payload):
    crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
    return (
      struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)
    )

  header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
  return (
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", header)
    + chunk(b"IDAT", zlib.compress(raw))
    + chunk(b"IEND", b"")
  )


SIZES = [(5, 7), (30, 900), (900, 40), (1200, 1600), (112, 112), (113, 97)]


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P"])
def test_png_parity(processor, tmp_path, height, width, mode):
  rng = np.random.default_rng(height * width)
  rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
  image = PIL.Image.fromarray(rgba, "RGBA").convert(mode)
  if mode == "P":
    image.info["transparency"] = 3  # palette entry 3 is transparent
  path = tmp_path / f"img_{mode}.png"
  image.save(path)
  _check_parity(processor, PIL.Image.open(path), _ours(path))


def test_grid_matches_transformers_over_many_sizes(processor):
  rng = np.random.default_rng(0)
  for height, width in rng.integers(1, 3000, (300, 2)).tolist():
    if max(height, width) / min(height, width) > 200:
      continue
    n = processor.get_number_of_image_patches(height, width)
    t, h, w = images.grid_for_size(
      height, width, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
    )
    assert t * h * w == n, (height, width)


def test_exif_rotated_jpeg(processor, tmp_path):
  rng = np.random.default_rng(1)
  array = rng.integers(0, 256, (60, 150, 3), dtype=np.uint8)
  exif = PIL.Image.Exif()
  exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
  path = tmp_path / "rotated.jpg"
  PIL.Image.fromarray(array).save(path, exif=exif, quality=90)
  decoded = images.decode_image(records.ImageRef(path=str(path)))
  assert decoded.shape == (150, 60, 3)  # upright, i.e. rotated
  upright = PIL.ImageOps.exif_transpose(PIL.Image.open(path))
  _check_parity(processor, upright, _ours(path))


def test_sixteen_bit_rgb_png(processor, tmp_path):
  rng = np.random.default_rng(2)
  values = rng.integers(0, 65536, (70, 90, 3), dtype=np.uint16)
  path = tmp_path / "rgb16.png"
  path.write_bytes(_png16(values))
  _check_parity(processor, PIL.Image.open(path), _ours(path))


def test_sixteen_bit_grey_png_keeps_high_byte(processor, tmp_path):
  rng = np.random.default_rng(3)
  values = rng.integers(0, 65536, (80, 64, 1), dtype=np.uint16)
  path = tmp_path / "grey16.png"
  path.write_bytes(_png16(values))
  decoded = images.decode_image(records.ImageRef(path=str(path)))
  high = (values[..., 0] >> 8).astype(np.uint8)
  np.testing.assert_array_equal(decoded, np.repeat(high[..., None], 3, -1))
  # Equal to transformers on the same picture in 8 bits. (transformers on the
  # raw 16-bit PIL image would clip all values > 255 to white.)
  _check_parity(processor, PIL.Image.fromarray(high), _ours(path))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_array_parity(processor, channels):
  rng = np.random.default_rng(channels)
  array = rng.integers(0, 256, (50, 77, channels), dtype=np.uint8)
  decoded = images.decode_image(records.ImageRef(array=array))
  ours = images.preprocess(
    decoded, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
  )
  _check_parity(processor, array, ours)


def test_patch_rows_are_merge_ordered():
  # Pixel value = patch index in raster order; rows must visit 2x2 blocks.
  image = np.zeros((56, 56, 3), np.float32)
  for r in range(4):
    for c in range(4):
      image[r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14] = r * 4 + c
  rows = images.patchify(image)
  assert rows.shape == (16, images.PATCH_DIM)
  np.testing.assert_array_equal(
    rows[:, 0], [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
  )


def _dicom(name):
  return dicom_data.get_testdata_file(name)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_dicom_decodes_with_sane_range(name):
  path = _dicom(name)
  decoded = images.decode_image(records.ImageRef(path=path))
  size = 128 if name.startswith("CT") else 64
  assert decoded.shape == (size, size, 3) and decoded.dtype == np.uint8
  # Windowed to a wide part of 0..255, not a flat or saturated image.
  assert int(decoded.max()) - int(decoded.min()) > 150
  assert 30 < decoded.mean() < 225 and decoded.std() > 20
  assert (decoded[..., 0] == decoded[..., 2]).all()
  pixels_NxP, grid_thw = images.preprocess(
    decoded, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
  )
  assert np.isfinite(pixels_NxP).all()
  assert grid_thw.tolist()[0] == 1


def test_dicom_window_and_rescale():
  path = _dicom("CT_small.dcm")
  ds = pydicom.dcmread(path)
  hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
  decoded = images.decode_image(records.ImageRef(path=path), window=(40, 400))
  lo, hi = 40 - 200, 40 + 200
  grey = decoded[..., 0].astype(int)
  assert (grey[hu <= lo] == 0).all() and (grey[hu >= hi] == 255).all()
  inside = (hu > lo + 5) & (hu < hi - 5)
  expected = (hu[inside] - lo) / 400 * 255
  assert np.abs(grey[inside] - expected).max() <= 2
  default = images.decode_image(records.ImageRef(path=path))
  assert not np.array_equal(default, decoded)  # the window has an effect


def test_dicom_file_window_is_used():
  path = _dicom("MR_small.dcm")  # carries WindowCenter 600 / Width 1600
  from_file = images.decode_image(records.ImageRef(path=path))
  explicit = images.decode_image(
    records.ImageRef(path=path), window=(600, 1600)
  )
  other = images.decode_image(records.ImageRef(path=path), window=(300, 200))
  np.testing.assert_array_equal(from_file, explicit)
  assert not np.array_equal(from_file, other)


def test_dicom_monochrome1_is_inverted(tmp_path):
  ds = pydicom.dcmread(_dicom("MR_small.dcm"))
  normal = images.decode_image(records.ImageRef(path=_dicom("MR_small.dcm")))
  ds.PhotometricInterpretation = "MONOCHROME1"
  buffer = io.BytesIO()
  ds.save_as(buffer)
  inverted = images.decode_image(records.ImageRef(data=buffer.getvalue()))
  np.testing.assert_array_equal(inverted, 255 - normal)


# ---- bad input: every error names the file and the record -----------------


def _expect_bad(ref, match, root="", **kwargs):
  with pytest.raises(errors.BadRecordError, match=match) as info:
    images.decode_image(ref, root, record_id="rec-7", **kwargs)
  assert info.value.record == "rec-7"
  assert "rec-7" in str(info.value)
  return info.value


def test_missing_file(tmp_path):
  path = str(tmp_path / "nope.png")
  e = _expect_bad(records.ImageRef(path=path), "not found")
  assert e.file == path and path in str(e)


def test_corrupt_png(tmp_path):
  path = tmp_path / "broken.png"
  buffer = io.BytesIO()
  PIL.Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
  path.write_bytes(buffer.getvalue()[:60])
  e = _expect_bad(records.ImageRef(path=str(path)), "corrupt or truncated")
  assert str(path) in str(e)


def test_text_file_named_png(tmp_path):
  path = tmp_path / "notes.png"
  path.write_text("this is not an image\n")
  e = _expect_bad(records.ImageRef(path=str(path)), "not an image")
  assert str(path) in str(e)


def test_empty_file(tmp_path):
  path = tmp_path / "empty.jpg"
  path.write_bytes(b"")
  _expect_bad(records.ImageRef(path=str(path)), "empty")


def test_corrupt_dicom(tmp_path):
  path = tmp_path / "scan.dcm"
  path.write_bytes(b"\x00" * 128 + b"DICM" + b"garbage" * 10)
  e = _expect_bad(records.ImageRef(path=str(path)), "DICOM")
  assert str(path) in str(e)


def test_decompression_bomb_limit(tmp_path):
  path = tmp_path / "big.png"
  PIL.Image.new("L", (100, 100)).save(path)
  _expect_bad(
    records.ImageRef(path=str(path)), "decompression", max_image_pixels=5000
  )
  # A forged 9000x9000 header with no real data: refused from the header
  # alone (decoding would fail differently), under the default limit.
  header = struct.pack(">IIBBBBB", 9000, 9000, 8, 0, 0, 0, 0)
  crc = struct.pack(">I", zlib.crc32(b"IHDR" + header) & 0xFFFFFFFF)
  forged = tmp_path / "bomb.png"
  forged.write_bytes(
    b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + crc
  )
  e = _expect_bad(records.ImageRef(path=str(forged)), "decompression")
  assert str(forged) in str(e)


def test_dicom_bomb_limit():
  _expect_bad(
    records.ImageRef(path=_dicom("CT_small.dcm")),
    "decompression",
    max_image_pixels=1000,
  )


def test_path_escaping_root(tmp_path):
  root = tmp_path / "data"
  root.mkdir()
  (tmp_path / "secret.png").write_bytes(b"x")
  for bad in ("../secret.png", "a/../../secret.png", ".."):
    e = _expect_bad(
      records.ImageRef(path=bad), "outside the data root", root=str(root)
    )
    assert isinstance(e, errors.PathOutsideRootError)
    assert bad in str(e)
  ok = root / "sub" / "x.png"
  ok.parent.mkdir()
  PIL.Image.new("RGB", (8, 8)).save(ok)
  image = images.decode_image(records.ImageRef(path="sub/../sub/x.png"), root)
  assert image.shape == (8, 8, 3)


def test_bad_arrays():
  _expect_bad(records.ImageRef(array=np.zeros((4, 4), np.float32)), "uint8")
  _expect_bad(records.ImageRef(array=np.zeros((4, 4, 2), np.uint8)), "HxW")
  _expect_bad(records.ImageRef(array=np.zeros((0, 4, 3), np.uint8)), "empty")


def test_extreme_aspect_ratio_is_a_value_error():
  with pytest.raises(ValueError, match="aspect ratio"):
    images.preprocess(
      np.zeros((2, 500, 3), np.uint8), min_pixels=3136, max_pixels=12544
    )
