"""`stepjax bench NAME [ARGS]`: speed measurements on this machine.

  sampler  our jit KV-cache sampler vs transformers' `generate` (bench model)
  train    our RL update vs the same update in transformers / PyTorch
  rl       advantages + loss math and entropy on a 64 x 512 batch
  data     SynthMed generation and Grain pipeline examples/s
  rollout  one whole RL step of the --config job (default: the default job),
           timed by part: sample, score, reference log-probs, update
  gpu      bf16 update (tokens/s, MFU) and sampler at the 3B model's shapes

Every bench first prints the machine (`bench_machine`: CPU model, vector
extensions, cores, jax and device, the f32 matmul peak) and stores it under
"machine" in the JSON written to --out. ARGS are `key=value` options of
the benches that take them (rollout, gpu; see their modules). Numbers are
for the README; no test asserts a speed.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from absl import app
from etils import epath

from stepjax import bench_machine

# name -> (module, function, takes the job config and key=value args)
_BENCHES = {
  "sampler": ("stepjax.sampling.bench", "main", False),
  "train": ("stepjax.train.bench", "main", False),
  "rl": ("stepjax.rl.bench", "main", False),
  "data": ("stepjax.data.bench", "main", False),
  "rollout": ("stepjax.train.rollout_bench", "main", True),
  "gpu": ("stepjax.train.gpu_bench", "main", True),
}


def main(argv: list[str], config: Any, flag_values: Any) -> None:
  if (
    not argv
    or argv[0] not in _BENCHES
    or (len(argv) > 1 and not _BENCHES[argv[0]][2])
  ):
    raise app.UsageError(
      f"usage: stepjax bench {{{'|'.join(_BENCHES)}}} [key=value ...] "
      "[--out=result.json] (key=value options: rollout and gpu only)"
    )
  module_name, fn, takes_args = _BENCHES[argv[0]]
  machine = bench_machine.describe()
  print(bench_machine.format_line(machine), flush=True)
  bench = getattr(importlib.import_module(module_name), fn)
  result = bench(argv[1:], config) if takes_args else bench([])
  if isinstance(result, dict):
    result["machine"] = machine
  if flag_values.out and isinstance(result, dict):
    path = epath.Path(flag_values.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")
