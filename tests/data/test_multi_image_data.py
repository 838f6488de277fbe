"""Several images per record: MRPO json image lists -> prompts -> batches.

An MRPO json file whose first record lists two images and whose second
has one, read with the shipped SynthMed tokenizer and its default prompt
(`tokenizer.build_prompt`): with data.max_images = 2 the batch holds two
image slots per prompt, the two-image prompt shows one vision run per
image, in order, before its question, and the sampler accepts the batch.
More images than data.max_images is a bad record, failed or skipped and
counted by the pipeline's usual rules.
"""

import json

import numpy as np
import PIL.Image
import pytest

from stepjax.data import errors, images, pipeline, sources
from stepjax.data import tokenizer as tokenizer_lib
from stepjax.models import config as config_lib
from stepjax.sampling import sampler

ROWS = [
  {
    "image": ["imgs/prior.png", "imgs/now.png"],
    "problem": "Has the lesion grown?",
    "solution": "yes",
  },
  {"image": "imgs/now.png", "problem": "Which organ?", "solution": "liver"},
]


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.load_tokenizer("")


def _write(tmp_path, rows=ROWS):
  (tmp_path / "imgs").mkdir(exist_ok=True)
  rng = np.random.default_rng(0)
  for name, size in (("prior", (56, 84)), ("now", (112, 112))):
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(tmp_path / "imgs" / f"{name}.png")
  path = tmp_path / "train.json"
  path.write_text(json.dumps(rows))
  return str(path)


def _batches(path, tok, **kwargs):
  opts = dict(
    batch_size=2,
    token_buckets=(128,),
    patch_buckets=(64,),
    shuffle=False,
    read_threads=0,
  )
  opts.update(kwargs)
  source = sources.MrpoJsonSource(
    path, on_bad_record=opts.get("on_bad_record", "fail")
  )
  data = pipeline.make_dataset(source, tok, pipeline.PipelineOptions(**opts))
  return iter(data)


def test_reader_keeps_the_images_in_order(tmp_path):
  path = _write(tmp_path)
  source = sources.MrpoJsonSource(path)
  two, one = source[0], source[1]
  assert [r.path for r in two.images] == [
    str(tmp_path / "imgs" / "prior.png"),
    str(tmp_path / "imgs" / "now.png"),
  ]
  assert two.image == two.images[0] and len(one.images) == 1
  bad = [{"image": [], "problem": "q", "solution": "a"}]
  with pytest.raises(errors.BadRecordError, match="non-empty list"):
    sources.MrpoJsonSource(_write(tmp_path, bad))


def test_pipeline_makes_a_two_image_batch(tmp_path, tok):
  info = tokenizer_lib.tokenizer_info(tok)
  batch = next(_batches(_write(tmp_path), tok, max_images=2))
  b, m = 2, 2
  assert batch["pixels_IxNxP"].shape == (b * m, 64, images.PATCH_DIM)
  np.testing.assert_array_equal(batch["image_prompt_I"], [0, 0, 1, 1])
  grids = batch["grid_thw_Ix3"]
  assert grids[3].tolist() == [0, 0, 0]  # record 1 has one image
  assert not batch["patch_mask_IxN"][3].any()
  assert grids[0].tolist() != grids[1].tolist()  # prior, then now
  np.testing.assert_array_equal(grids[1], grids[2])  # the same image
  # One vision run per image, in slot order, before the question.
  ids = batch["prompt_ids_BxT"][0][batch["prompt_mask_BxT"][0] > 0]
  starts = np.flatnonzero(ids == info.vision_start_id)
  ends = np.flatnonzero(ids == info.vision_end_id)
  assert len(starts) == len(ends) == 2
  pads = [
    int(np.sum(ids[s:e] == info.image_pad_id)) for s, e in zip(starts, ends)
  ]
  assert pads == [int(np.prod(g)) // 4 for g in grids[:2]]
  text = tok.decode(ids[ends[-1] + 1 :])
  assert text.startswith("Has the lesion grown?")
  # The model side accepts it: pads per prompt match its slots' images.
  cfg = config_lib.ModelConfig.tiny(vocab_size=2048).replace(
    image_pad_token_id=info.image_pad_id,
    vision_start_token_id=info.vision_start_id,
    vision_end_token_id=info.vision_end_id,
  )
  prompt = sampler.prepare_inputs(batch, cfg)
  assert prompt.images.vision_meta.valid_IxM[3].sum() == 0  # the empty slot


def test_one_image_per_prompt_is_the_default_layout(tmp_path, tok):
  rows = [dict(ROWS[1], id=str(i)) for i in range(2)]
  batch = next(_batches(_write(tmp_path, rows), tok))
  assert batch["pixels_IxNxP"].shape[0] == 2
  np.testing.assert_array_equal(batch["image_prompt_I"], [0, 1])


def test_too_many_images_fail_or_skip(tmp_path, tok):
  path = _write(tmp_path, ROWS + [dict(ROWS[1], id="x")])
  with pytest.raises(errors.BadRecordError, match="data.max_images=1"):
    next(_batches(path, tok))
  it = _batches(path, tok, on_bad_record="skip")
  batch = next(it)
  assert batch["ids"] == ["train.json#1", "x"]
  assert pipeline.skip_counts(it) == {"too_many_images": 1}
