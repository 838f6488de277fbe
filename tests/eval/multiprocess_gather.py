"""One of two processes gathering eval rows (run by test_eval_gather.py).

argv: output dir, coordinator address, process id. Each process holds its
own rows, skip counts and answer-judge counts (as after decoding its slice
of the eval split); both must end with every row in process order and the
counts summed. Writes what it got to output/proc{id}.json.
"""

import json
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from stepjax.eval import evaluate  # noqa: E402
from stepjax.train import distributed  # noqa: E402


def local_part(pid):
  rows = [
    {"id": f"p{pid}-{i}", "answer": "é" * (pid + i), "step_labels": [1, 0]}
    for i in range(2 + pid)  # slices of different sizes
  ]
  skipped = {"bad_image": 1 + pid} if pid else {"bad_image": 2, "empty": 1}
  judged = {
    "mode": "judge", "model": "m", "requests": len(rows), "calls": 3 + pid,
    "fallbacks_by_cause": {"timeout": pid, "invalid_reply": 1},
  }  # fmt: skip
  return rows, skipped, judged


def main():
  out_dir, address, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(address, num_processes=2, process_id=pid)
  assert jax.process_count() == 2
  values = distributed.all_processes({"pid": np.int32(pid), "x": [pid] * pid})
  rows, skipped, judged = evaluate._from_all_processes(*local_part(pid))
  out = {"values": values, "rows": rows, "skipped": skipped, "judged": judged}
  path = pathlib.Path(out_dir) / f"proc{pid}.json"
  path.write_text(json.dumps(out), encoding="utf-8")


if __name__ == "__main__":
  main()
