"""`stepjax bench rollout` on the :test job: every part timed, JSON written.

One warm-up and one timed RL step of configs/synthmed_tiny.py:test, on one
device, through
the bench command's own entry point; speeds are not asserted.
"""

import json
import types

import pytest

from stepjax import bench
from stepjax.errors import InputError
from stepjax.train import rollout_bench

from . import trainer_utils


def test_rollout_bench_times_each_part(tmp_path, capsys):
  out = tmp_path / "rollout.json"
  bench.main(
    ["rollout", "steps=1", "warmup=1"],
    # One device (the tests fake 8), as the default job runs on a CPU.
    trainer_utils.test_config(**{"mesh.data": 1}),
    types.SimpleNamespace(out=str(out)),
  )
  printed = capsys.readouterr().out
  assert printed.startswith("machine: ")
  assert "prepare" in printed and "update" in printed
  result = json.loads(out.read_text())
  assert result["machine"]["cores"] >= 1
  assert result["prompts"] == 2 and result["group_size"] == 2
  assert result["steps"] == 1 and len(result["warmup_step_s"]) == 1
  parts = rollout_bench.PARTS
  for name in (*parts, "step"):
    assert result[f"{name}_s_min"] <= result[f"{name}_s_median"]
  for name in ("sample", "prepare", "update", "step"):
    assert result[f"{name}_s_median"] > 0
  assert sum(result[f"{name}_share"] for name in parts) == pytest.approx(1)
  assert result["sample_tokens_per_s_median"] > 0
  assert result["update_tokens_per_s_median"] > 0
  assert result["compiles_during_timing"] >= 0


def test_rollout_bench_rejects_zero_steps():
  with pytest.raises(InputError, match="steps"):
    rollout_bench.bench_rollout(trainer_utils.test_config(), steps=0)
