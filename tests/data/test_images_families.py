"""Image preprocessing per model family: Qwen2.5-VL and Qwen3-VL.

Both families' checkpoints use transformers' Qwen2-VL image processor with
their own settings; ours must give the same patch rows and grids for each.
Only the PIL backend (`Qwen2VLImageProcessorPil`) is compared: it is the
one we reproduce (PIL bicubic resize), and the torchvision backend needs
torch, which this environment does not install.
"""

import dataclasses
import io

import numpy as np
import PIL.Image
import pytest
from transformers.models.auto import image_processing_auto
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf

from stepjax import config_utils
from stepjax.data import images, pipeline, records, sources
from stepjax.data import tokenizer as tokenizer_lib
from stepjax.errors import InputError
from stepjax.models import config as config_lib

# Same resize (PIL, on uint8), rescale (float64, then cast) and normalise
# (float32) as transformers, so the rows agree to the last bit; the bound
# only allows for float32 rounding.
TOLERANCE = 1e-6

SPECS = {"qwen2_5_vl": images.QWEN2_5_VL, "qwen3_vl": images.QWEN3_VL}
# The pixel ranges of the released checkpoints' preprocessor_config.json
# (not transformers' class defaults), to check one case at real settings.
CHECKPOINT_PIXELS = {
  "qwen2_5_vl": (56 * 56, 28 * 28 * 16384),
  "qwen3_vl": (256 * 256, 4096 * 4096),
}
# name -> (height, width, min_pixels, max_pixels in units of factor**2, or
# None for the family's checkpoint range), and the resize it must take.
CASES = {
  "small": (50, 77, 4, 64, "round"),
  "odd_aspect_wide": (37, 301, 4, 64, "round"),
  "odd_aspect_tall": (233, 41, 4, 64, "round"),
  "upscale_to_min": (20, 27, 16, 64, "up"),
  "downscale_to_max": (500, 380, 4, 64, "down"),
  "checkpoint_range": (100, 150, None, None, None),
}
MODES = ("RGB", "L", "RGBA")


def _pixel_range(family, case):
  _, _, lo, hi, _ = CASES[case]
  if lo is None:
    return CHECKPOINT_PIXELS[family]
  factor = SPECS[family].factor
  return lo * factor**2, hi * factor**2


def _processor(spec, min_pixels, max_pixels):
  """transformers' processor with every family setting given explicitly
  (nothing read from a hub checkpoint)."""
  return hf.Qwen2VLImageProcessorPil(
    min_pixels=min_pixels,
    max_pixels=max_pixels,
    patch_size=spec.patch_size,
    temporal_patch_size=spec.temporal_patch_size,
    merge_size=spec.merge_size,
    image_mean=list(spec.mean),
    image_std=list(spec.std),
  )


def _picture(height, width, mode, seed):
  """A random picture in `mode` (RGBA with varied transparency)."""
  rng = np.random.default_rng(seed)
  channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
  array = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
  return PIL.Image.fromarray(array[..., 0] if channels == 1 else array, mode)


def _decoded(picture):
  """What our decoder gives for the picture stored as a PNG file."""
  buffer = io.BytesIO()
  picture.save(buffer, format="PNG")
  ref = records.ImageRef(data=buffer.getvalue())
  return images.decode_image(ref, record_id="parity")


def _max_abs_diff(family, case, mode):
  spec = SPECS[family]
  height, width = CASES[case][:2]
  min_pixels, max_pixels = _pixel_range(family, case)
  picture = _picture(height, width, mode, seed=height * width)
  theirs = _processor(spec, min_pixels, max_pixels)(
    images=picture, return_tensors="np"
  )
  pixels_NxP, grid_thw = images.preprocess(
    _decoded(picture), min_pixels=min_pixels, max_pixels=max_pixels, spec=spec
  )
  assert pixels_NxP.dtype == np.float32
  assert pixels_NxP.shape[1] == spec.patch_dim
  np.testing.assert_array_equal(grid_thw, theirs["image_grid_thw"][0])
  assert pixels_NxP.shape == theirs["pixel_values"].shape
  return float(np.abs(pixels_NxP - theirs["pixel_values"]).max())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("family", sorted(SPECS))
def test_preprocess_equals_transformers(family, case, mode):
  assert _max_abs_diff(family, case, mode) <= TOLERANCE


@pytest.mark.parametrize("family", sorted(SPECS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_cases_take_the_resize_they_name(family, case):
  """Each case exercises its branch of smart_resize for both families."""
  height, width, _, _, kind = CASES[case]
  spec = SPECS[family]
  min_pixels, max_pixels = _pixel_range(family, case)
  f = spec.factor
  rounded = round(height / f) * f * round(width / f) * f
  new_h, new_w = images.smart_resize(
    height, width, min_pixels=min_pixels, max_pixels=max_pixels, spec=spec
  )
  assert new_h % f == 0 and new_w % f == 0
  if kind == "round":
    assert min_pixels <= rounded <= max_pixels
  elif kind == "up":
    assert rounded < min_pixels <= new_h * new_w
  elif kind == "down":
    assert new_h * new_w <= max_pixels < rounded
  t, gh, gw = images.grid_for_size(
    height, width, min_pixels=min_pixels, max_pixels=max_pixels, spec=spec
  )
  assert (t, gh, gw) == (1, new_h // spec.patch_size, new_w // spec.patch_size)


def test_transformers_maps_qwen3_vl_to_this_processor():
  """Qwen3-VL has no image processor of its own in transformers."""
  names = image_processing_auto.IMAGE_PROCESSOR_MAPPING_NAMES["qwen3_vl"]
  assert names["pil"] == hf.Qwen2VLImageProcessorPil.__name__


def test_spec_sizes():
  assert images.QWEN2_5_VL.factor == 28
  assert images.QWEN2_5_VL.patch_dim == images.PATCH_DIM == 1176
  assert images.QWEN3_VL.factor == 32
  assert images.QWEN3_VL.patch_dim == 3 * 2 * 16 * 16 == 1536


def test_image_spec_from_model_config():
  qwen25 = images.image_spec(config_lib.ModelConfig.tiny())
  assert qwen25 == images.QWEN2_5_VL
  # The brief's `tiny().replace(family="qwen3_vl", vision={...})` is refused
  # by ModelConfig's own family checks (Qwen3-VL needs a position grid,
  # qk_norm, ...), so the tiny Qwen3-VL preset stands in.
  qwen3_cfg = config_lib.ModelConfig.tiny_qwen3()
  qwen3 = images.image_spec(qwen3_cfg)
  assert qwen3 == images.QWEN3_VL
  assert qwen3.patch_dim == 1536 == qwen3_cfg.vision.patch_dim


def test_image_spec_refuses_unknown_family_and_channels():
  cfg = config_lib.ModelConfig.tiny()
  with pytest.raises(InputError, match="ModelConfig.family='qwen2_vl'"):
    images.image_spec(_Fake(family="qwen2_vl", vision=cfg.vision))
  grey = dataclasses.replace(cfg.vision, in_channels=1)
  with pytest.raises(InputError, match="vision.in_channels=1"):
    images.image_spec(_Fake(family="qwen2_5_vl", vision=grey))


@dataclasses.dataclass
class _Fake:
  """Stands in for a ModelConfig that its own checks would refuse."""

  family: str
  vision: object


def _qwen3_records(n):
  rng = np.random.default_rng(0)
  sizes = [(64, 64), (70, 100), (96, 40), (64, 128)]
  return [
    records.Record(
      id=f"r{i}",
      question="Which organ is shown?",
      answer="liver",
      image=records.ImageRef(
        array=rng.integers(0, 256, (*sizes[i % 4], 3), dtype=np.uint8)
      ),
      rationale="The liver is enlarged.",
    )
    for i in range(n)
  ]


def test_pipeline_batch_for_qwen3_vl():
  """A qwen3_vl job's options give 1536-wide rows and t*h*w // 4 pads."""
  model_cfg = config_lib.ModelConfig.tiny_qwen3()
  config = config_utils.default_config()
  spec = images.QWEN3_VL
  opts = pipeline.PipelineOptions.from_config(
    config,
    model_cfg=model_cfg,
    batch_size=4,
    min_pixels=4 * spec.factor**2,
    max_pixels=16 * spec.factor**2,
    token_buckets=(128, 192),
    patch_buckets=(64,),
    shuffle=False,
    read_threads=0,
  )
  assert opts.image_spec == spec
  recs = _qwen3_records(4)
  tok = tokenizer_lib.load_tokenizer()
  batch = next(
    iter(pipeline.make_dataset(sources.InMemorySource(recs), tok, opts))
  )
  assert batch["pixels_IxNxP"].shape == (4, 64, 1536)
  image_pad = tok.convert_tokens_to_ids(tokenizer_lib.IMAGE_PAD)
  for i, rid in enumerate(batch["ids"]):
    grid = batch["grid_thw_Ix3"][i]
    pads = int((batch["prompt_ids_BxT"][i] == image_pad).sum())
    assert pads == int(grid.prod()) // 4
    want, want_grid = images.preprocess(
      recs[int(rid[1:])].image.array,
      min_pixels=opts.min_pixels,
      max_pixels=opts.max_pixels,
      spec=spec,
    )
    np.testing.assert_array_equal(grid, want_grid)
    np.testing.assert_array_equal(
      batch["pixels_IxNxP"][i, : want.shape[0]], want
    )
    assert batch["patch_mask_IxN"][i].sum() == want.shape[0]


def test_from_config_without_model_config_keeps_qwen2_5_vl():
  opts = pipeline.PipelineOptions.from_config(config_utils.default_config())
  assert opts.image_spec == images.QWEN2_5_VL
