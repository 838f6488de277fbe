"""`stepjax bench sampler|train|rl|data`: speed measurements on this machine.

  sampler  our jit KV-cache sampler vs transformers' `generate` (bench model)
  train    our RL update vs the same update in transformers / PyTorch
  rl       advantages + loss math and entropy on a 64 x 512 batch
  data     SynthMed generation and Grain pipeline examples/s

Each prints a table and writes JSON to --out when given. Numbers are for
the README; no test asserts a speed.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from absl import app
from etils import epath

_BENCHES = {
  "sampler": ("stepjax.sampling.bench", "main"),
  "train": ("stepjax.train.bench", "main"),
  "rl": ("stepjax.rl.bench", "main"),
  "data": ("stepjax.data.bench", "main"),
}


def main(argv: list[str], config: Any, flag_values: Any) -> None:
  del config
  if len(argv) != 1 or argv[0] not in _BENCHES:
    raise app.UsageError(
      f"usage: stepjax bench {{{'|'.join(_BENCHES)}}} [--out=result.json]"
    )
  module_name, fn = _BENCHES[argv[0]]
  result = getattr(importlib.import_module(module_name), fn)([])
  if flag_values.out and isinstance(result, dict):
    path = epath.Path(flag_values.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")
