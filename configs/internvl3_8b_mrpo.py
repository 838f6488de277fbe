r"""The paper's MRPO recipe on InternVL3-8B (transformers' -hf layout).

  stepjax train --config=configs/internvl3_8b_mrpo.py:mesh=v5p8 \
      --config.init_from=gs://BUCKET/InternVL3-8B-hf \
      --config.data.path=gs://BUCKET/mrpo/train.json \
      --workdir=gs://BUCKET/runs/mrpo_internvl3_8b

The settings of configs/qwen25vl_7b_mrpo.py (G=8, temperature 1.0, 512 new
tokens, 64 completions per step, AdamW lr 1e-6, beta 0.04, eps 0.2, bf16,
rematerialisation, one epoch), with the InternVL3 policy. Images are cut
into 448-pixel tiles: max_pixels 5 * 448**2 allows 4 tiles plus the
thumbnail, at most 1280 image tokens (about the 1024 of the Qwen recipe);
an image gets 1, 3, 4 or 5 tiles of 1024 patch rows.

Variants as in qwen25vl_7b_mrpo.py (algo=, mesh=v5e16|v5p8|cpu, process=),
plus size=8b|2b|1b.
"""

import pathlib

from stepjax import config_utils

_RECIPE = pathlib.Path(__file__).with_name("qwen25vl_7b_mrpo.py")
_SIZES = ("8b", "2b", "1b")
_TILE = 448


def get_config(arg=None):
  size, rest = config_utils.pop_arg(arg, "size", "8b", _SIZES)
  c = config_utils.load_config_file(_RECIPE, rest)
  c.model.preset = f"internvl3_{size}"
  c.data.min_pixels = _TILE * _TILE
  c.data.max_pixels = 5 * _TILE * _TILE
  c.data.patch_buckets = (1024, 3072, 5120)
  c.data.token_buckets = (512, 1024, 1536)
  return c
