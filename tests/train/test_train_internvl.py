"""`stepjax train` on the test config with the tiny InternVL preset: SFT,
RL and both evaluations run end to end (56-pixel tiles, 1D positions)."""

import os
import subprocess
import sys

from stepjax.train import metrics

from . import trainer_utils

CONFIG = str(trainer_utils.REPO / "configs" / "synthmed_tiny.py") + ":test"


def test_train_runs_with_tiny_internvl(tmp_path):
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  run = subprocess.run(
    [sys.executable, "-m", "stepjax", "train", f"--config={CONFIG}",
     "--config.model.preset=tiny_internvl", f"--workdir={tmp_path}"],
    env=env, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert "[rl]" in run.stdout and "eval final" in run.stdout
  steps = [r["step"] for r in metrics.read_metrics(str(tmp_path))]
  assert steps == list(range(len(steps))) and len(steps) >= 4
