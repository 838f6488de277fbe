r"""The paper's MRPO recipe on Qwen3-VL-8B-Instruct, for TPU pods.

  stepjax train --config=configs/qwen3vl_8b_mrpo.py:mesh=v5e16 \
      --config.init_from=gs://BUCKET/Qwen3-VL-8B-Instruct \
      --config.data.path=gs://BUCKET/mrpo/train.json \
      --workdir=gs://BUCKET/runs/mrpo_qwen3vl8b

The settings of configs/qwen25vl_7b_mrpo.py (G=8, temperature 1.0, 512 new
tokens, 64 completions per step, AdamW lr 1e-6, beta 0.04, eps 0.2, bf16,
rematerialisation, one epoch), with the Qwen3-VL policy and the reasoning
tag Qwen3-family models use, `<thinking>` (MRPO_SPEC.md). Images are cut
into 16-pixel patches (Qwen3-VL's processor), so max_pixels 802816 gives
at most 784 image tokens.

Variants as in qwen25vl_7b_mrpo.py (algo=, mesh=v5e16|v5p8|cpu, process=),
plus size=8b|4b|2b.
"""

import importlib.util
import pathlib

_RECIPE = pathlib.Path(__file__).with_name("qwen25vl_7b_mrpo.py")
_SIZES = ("8b", "4b", "2b")


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
  c.model.preset = f"qwen3vl_{size}"
  c.tokenizer.think_tag = "thinking"
  return c
