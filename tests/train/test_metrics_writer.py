"""MetricsWriter: JSONL and TensorBoard scalars, written without loading
torch (tensorboardX would import it where installed)."""

import importlib.util
import json
import struct
import subprocess
import sys

from tensorboardX.proto import event_pb2

_WRITE = """
import sys
from stepjax.train import metrics
w = metrics.MetricsWriter(sys.argv[1], 2, enabled=True)
w.write(0, "rl", {"reward": 1.5, "kl": float("nan")})
w.write(1, "rl", {"reward": 0.25})
w.close()
print("torch loaded:", "torch" in sys.modules)
if sys.argv[2] == "1":
  import torch  # still importable afterwards
  print("torch imported:", torch.__name__)
"""


def _events(path):
  """The Event records of a TFRecord file (length, crc, data, crc)."""
  data, out, i = path.read_bytes(), [], 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i : i + 8])
    event = event_pb2.Event()
    event.ParseFromString(data[i + 12 : i + 12 + n])
    out.append(event)
    i += 12 + n + 4
  return out


def test_scalars_reach_jsonl_and_tensorboard_without_torch(tmp_path):
  has_torch = importlib.util.find_spec("torch") is not None
  out = subprocess.run(
    [sys.executable, "-c", _WRITE, str(tmp_path), "1" if has_torch else "0"],
    capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert out.returncode == 0, out.stderr[-2000:]
  assert "torch loaded: False" in out.stdout
  if has_torch:
    assert "torch imported: torch" in out.stdout
  rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").open()]
  assert [(r["step"], r["reward"]) for r in rows] == [(0, 1.5), (1, 0.25)]
  assert "kl" not in rows[0]  # not finite: not logged
  (events_file,) = (tmp_path / "tb").iterdir()
  scalars = [
    (e.step, v.tag, v.simple_value)
    for e in _events(events_file)
    for v in e.summary.value
  ]
  assert scalars == [(0, "rl/reward", 1.5), (1, "rl/reward", 0.25)]
