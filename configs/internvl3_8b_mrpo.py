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

import importlib.util
import pathlib

_RECIPE = pathlib.Path(__file__).with_name("qwen25vl_7b_mrpo.py")
_SIZES = ("8b", "2b", "1b")
_TILE = 448


def get_config(arg=None):
  spec = importlib.util.spec_from_file_location("qwen25vl_7b_mrpo", _RECIPE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  parts = [p for p in (arg or "").split(",") if p]
  size = "8b"
  for p in list(parts):
    if p.startswith("size="):
      size = p.split("=", 1)[1]
      parts.remove(p)
  if size not in _SIZES:
    raise ValueError(f"size={size!r}: expected one of {list(_SIZES)}")
  c = module.get_config(",".join(parts) or None)
  c.model.preset = f"internvl3_{size}"
  c.data.min_pixels = _TILE * _TILE
  c.data.max_pixels = 5 * _TILE * _TILE
  c.data.patch_buckets = (1024, 3072, 5120)
  c.data.token_buckets = (512, 1024, 1536)
  return c
