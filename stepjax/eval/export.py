r"""`stepjax export`: a trained policy as a transformers (HF) directory.

  stepjax export --config=configs/synthmed_tiny.py --checkpoint=runs/a \
      --out=runs/a_hf

Writes config.json + model.safetensors (`models.hf_convert.save_hf`, the
transformers v5 Qwen2.5-VL layout) and the tokenizer the run used
(`save_pretrained`), so that the directory loads with
`transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(out)` and
`AutoTokenizer.from_pretrained(out)`, and as stepjax's
`--config.init_from=out` or `--checkpoint=out`. The step-value head is not
part of the HF model; it is not exported. --checkpoint is what `stepjax
eval` accepts (`eval/checkpoints.py`); use the config the run was trained
with.
"""

from __future__ import annotations

import json
from typing import Any

import jax
from absl import logging
from etils import epath

from stepjax.errors import InputError
from stepjax.eval import checkpoints
from stepjax.models import hf_convert

_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def main(argv: list[str], config: Any, flag_values: Any) -> None:
  logging.set_verbosity(config.log_level)
  out = export(
    config, flag_values.checkpoint, flag_values.out, flag_values.overwrite
  )
  print(f"wrote HF checkpoint and tokenizer to {out}", flush=True)


def export(
  config: Any, checkpoint: str, out_dir: str, overwrite: bool = False
) -> str:
  """Writes the policy of `checkpoint` and its tokenizer to `out_dir`, which
  must be new or empty unless `overwrite`."""
  out = epath.Path(out_dir)
  if checkpoint and out.resolve() == epath.Path(checkpoint).resolve():
    raise InputError(f"--out={out_dir} is --checkpoint itself; pick a new dir")
  if out.exists() and not out.is_dir():
    raise InputError(f"--out={out_dir} is a file; give a directory")
  if not overwrite and out.exists() and any(out.iterdir()):
    raise InputError(
      f"--out={out_dir} is not empty; pick a new directory or pass "
      "--overwrite to replace the files export writes there"
    )
  loaded = checkpoints.load(config, checkpoint)
  if jax.process_index() != 0:
    return str(out)
  hf_convert.save_hf(loaded.params, loaded.cfg, str(out))
  loaded.tokenizer.save_pretrained(str(out))
  _portable_tokenizer_config(out)
  return str(out)


def _portable_tokenizer_config(out: epath.Path) -> None:
  """transformers 5 names its own backend class in tokenizer_config.json;
  the generic fast class also loads with transformers 4 (as the shipped
  SynthMed tokenizer does)."""
  path = out / "tokenizer_config.json"
  if not path.exists():
    return
  config = json.loads(path.read_text())
  if config.get("tokenizer_class") in (None, "TokenizersBackend"):
    config["tokenizer_class"] = _TOKENIZER_CLASS
    path.write_text(json.dumps(config, indent=2) + "\n")
