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

import pathlib

from stepjax import config_utils

_RECIPE = pathlib.Path(__file__).with_name("qwen25vl_7b_mrpo.py")
_SIZES = ("8b", "4b", "2b")


def get_config(arg=None):
  size, rest = config_utils.pop_arg(arg, "size", "8b", _SIZES)
  c = config_utils.load_config_file(_RECIPE, rest)
  c.model.preset = f"qwen3vl_{size}"
  c.tokenizer.think_tag = "thinking"
  return c
