"""InternVL image preprocessing equals transformers' (dynamic tiling).

InternVL's processor uses transformers' GotOcr2 image processor with
`crop_to_patches`; only its PIL backend (`GotOcr2ImageProcessorPil`) is
compared, the one we reproduce (the torchvision backend needs
torchvision, which this environment does not install). Our patch rows are
turned back into transformers' [tiles, 3, S, S] layout to compare.
"""

import dataclasses

import numpy as np
import pytest
import test_images_families as families
from transformers.models.auto import image_processing_auto
from transformers.models.got_ocr2 import image_processing_pil_got_ocr2 as hf

from stepjax import config_utils
from stepjax.data import images, pipeline, records, sources, tiles
from stepjax.data import tokenizer as tokenizer_lib
from stepjax.models import config as config_lib
from stepjax.models import vision_internvl

TOLERANCE = 1e-6
# name -> (height, width, tile, max tiles)
CASES = {
  "wide": (300, 500, 448, 12),
  "square_one_tile": (448, 448, 448, 12),
  "tall": (1000, 200, 448, 12),
  "odd_wide": (123, 987, 448, 12),
  "big_square": (900, 900, 448, 12),
  "small_upscaled": (50, 60, 448, 12),
  "six_tiles": (333, 777, 448, 6),
  "no_tiling": (300, 500, 448, 1),
  "tiny_tiles": (70, 130, 56, 4),
}
MODES = ("RGB", "L", "RGBA")


@dataclasses.dataclass
class _Tiles:
  """The vision sizes `tiles_from_rows` reads, from an ImageSpec."""

  spec: images.ImageSpec
  in_channels: int = 3

  @property
  def patch_size(self):
    return self.spec.patch_size

  @property
  def tile_side(self):
    return self.spec.tile_size // self.spec.patch_size


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_preprocess_equals_transformers(case, mode):
  height, width, tile, most = CASES[case]
  spec = dataclasses.replace(images.INTERNVL, tile_size=tile)
  processor = hf.GotOcr2ImageProcessorPil(
    size={"height": tile, "width": tile},
    crop_to_patches=True,
    min_patches=1,
    max_patches=most,
    image_mean=list(spec.mean),
    image_std=list(spec.std),
  )
  picture = families._picture(height, width, mode, seed=height * width)
  theirs = processor(images=picture, return_tensors="np")
  # The pixel budget covers the thumbnail too (images.tile_limits).
  max_pixels = (most + (most > 1)) * tile**2
  assert images.tile_limits(spec, 1, max_pixels) == (1, most)
  pixels_NxP, grid_thw = images.preprocess(
    families._decoded(picture), min_pixels=1, max_pixels=max_pixels, spec=spec
  )
  side = tile // spec.patch_size
  assert grid_thw.tolist() == [theirs["num_patches"][0], side, side]
  assert pixels_NxP.shape[1] == 3 * 14 * 14
  ours = vision_internvl.tiles_from_rows(pixels_NxP, _Tiles(spec))
  assert ours.shape == theirs["pixel_values"].shape
  diff = float(np.abs(ours - theirs["pixel_values"]).max())
  print(f"[preprocess] internvl {case} {mode}: tiles={grid_thw[0]} {diff}")
  assert diff <= TOLERANCE
  count = images.grid_for_size(
    height, width, min_pixels=1, max_pixels=max_pixels, spec=spec
  )
  assert count == tuple(grid_thw.tolist())
  assert count[0] == processor.get_number_of_image_patches(height, width, {})


def test_transformers_maps_internvl_to_this_processor():
  names = image_processing_auto.IMAGE_PROCESSOR_MAPPING_NAMES["internvl"]
  assert names["pil"] == hf.GotOcr2ImageProcessorPil.__name__


def test_tie_break_prefers_more_tiles_while_the_image_is_large():
  # 2:1 image: (2, 1) and (4, 2) tie; the larger grid wins only when the
  # image covers more than half of it.
  assert tiles.best_grid(448, 896, 448, 1, 8) == (2, 1)
  assert tiles.best_grid(1000, 2000, 448, 1, 8) == (4, 2)


def test_image_spec_and_pipeline_rows_for_internvl():
  model_cfg = config_lib.ModelConfig.tiny_internvl()
  spec = images.image_spec(model_cfg)
  assert (spec.tile_size, spec.patch_dim, spec.mean) == (
    56,
    3 * 14 * 14,
    images.IMAGENET_MEAN,
  )
  opts = pipeline.PipelineOptions.from_config(
    config_utils.default_config(),
    model_cfg=model_cfg,
    batch_size=2,
    min_pixels=56 * 56,
    max_pixels=4 * 56 * 56,
    token_buckets=(128,),
    patch_buckets=(64,),
    shuffle=False,
    read_threads=0,
  )
  rng = np.random.default_rng(0)
  recs = [
    records.Record(
      id=f"r{i}",
      question="Which organ?",
      answer="liver",
      image=records.ImageRef(
        array=rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      ),
    )
    for i, (h, w) in enumerate([(60, 130), (80, 80)])
  ]
  tok = tokenizer_lib.load_tokenizer()
  batch = next(
    iter(pipeline.make_dataset(sources.InMemorySource(recs), tok, opts))
  )
  image_pad = tok.convert_tokens_to_ids(tokenizer_lib.IMAGE_PAD)
  for i, grid in enumerate(batch["grid_thw_Ix3"]):
    assert grid[1:].tolist() == [4, 4]
    pads = int((batch["prompt_ids_BxT"][i] == image_pad).sum())
    assert pads == grid[0] * 4
  assert sorted(batch["grid_thw_Ix3"][:, 0].tolist()) == [1, 3]
