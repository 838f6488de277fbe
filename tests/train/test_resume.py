"""Kill a training run with SIGKILL mid-way, start it again with the same
command: it resumes from the last checkpoint and ends with exactly the
parameters of an uninterrupted run. Then truncate the latest checkpoint and
run again: it falls back to the previous one, with the same result."""

import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import xla_env
from etils import epath

from stepjax.train import metrics

from . import trainer_utils

CONFIG = str(trainer_utils.REPO / "configs" / "synthmed_tiny.py") + ":test"
OVERRIDES = [
  "--config.train.steps=3",
  "--config.train.checkpoint_every=1",
  "--config.data.num_eval=4",
  "--config.train.keep_checkpoints=5",
]


def _command(workdir, preset):
  return [
    sys.executable, "-m", "stepjax", "train", f"--config={CONFIG}",
    f"--workdir={workdir}", *OVERRIDES, f"--config.model.preset={preset}",
  ]  # fmt: skip


def _env(cache_dir):
  """One device; one persistent compilation cache for the test's four runs
  of the same job (the later runs load their executables instead of
  compiling them again: the same programs, only sooner)."""
  return xla_env.env(
    1,
    JAX_COMPILATION_CACHE_DIR=str(cache_dir),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )


def _final_params(workdir):
  manager = ocp.CheckpointManager(
    epath.Path(workdir) / "checkpoints",
    item_names=("state",),
    item_handlers={"state": ocp.StandardCheckpointHandler()},
  )
  step = manager.latest_step()
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
  )
  return step, trainer_utils.flat_params(restored["state"]["params"])


def _wait_for_checkpoint(proc, workdir, steps, timeout=600):
  """Returns once a finished checkpoint with a step in `steps` exists."""
  root = epath.Path(workdir) / "checkpoints"
  deadline = time.time() + timeout
  while time.time() < deadline:
    if root.exists() and any(
      p.name in {str(s) for s in steps} for p in root.iterdir()
    ):
      return
    if proc.poll() is not None:
      raise AssertionError(f"run ended before a checkpoint in {steps}")
    time.sleep(0.05)
  raise AssertionError(f"no checkpoint in {steps} within {timeout}s")


# Qwen3-VL's tiny preset: the checkpointing code does not depend on the
# family, and this also covers the Qwen3-VL state (position grid, DeepStack
# mergers, q/k norms); Qwen2.5-VL's runs go through the same code in
# tests/test_cli_errors.py (the truncated-checkpoint fallback of `eval`)
# and the experiment grid's resume test.
PRESET = "tiny_qwen3"


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
  preset = PRESET
  """Also: truncating the latest checkpoint afterwards and rerunning falls
  back to the previous checkpoint and ends with the same parameters."""
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  env = _env(tmp_path / "jax_cache")
  reference = subprocess.Popen(
    _command(straight, preset), env=env, stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT, text=True,
  )  # fmt: skip
  victim = subprocess.Popen(
    _command(killed, preset), env=env, stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )  # fmt: skip
  # Checkpoint 3 = SFT (2 steps) and the first RL step done; kill before
  # the run ends (5 steps).
  _wait_for_checkpoint(victim, killed, (3, 4))
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  assert victim.returncode == -signal.SIGKILL
  out = reference.communicate(timeout=600)[0]
  assert reference.returncode == 0, out[-3000:]
  resumed = subprocess.run(
    _command(killed, preset), env=env, capture_output=True, text=True,
    timeout=600,
  )  # fmt: skip
  assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
  # Steps 0..2 were not redone; at least the last step ran after restart.
  assert "step 2/5" not in resumed.stdout
  assert "step 4/5" in resumed.stdout or "step 3/5" in resumed.stdout
  step_a, params_a = _final_params(straight)
  step_b, params_b = _final_params(killed)
  assert step_a == step_b == 5
  for name, value in params_a.items():
    np.testing.assert_array_equal(value, params_b[name], err_msg=name)
  # Steps redone after the restart are logged once, not twice.
  steps = [r["step"] for r in metrics.read_metrics(str(killed))]
  assert steps == list(range(5))
  # The final evaluation table was printed by the resumed run too.
  assert "final" in resumed.stdout
  # A truncated latest checkpoint falls back to the previous one (the
  # killed run's workdir is reused: one more short run, not two).
  _truncate_latest_and_rerun(killed, params_a, env, preset)


def _largest_file(directory):
  files = [p for p in pathlib.Path(directory).rglob("*") if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


def _truncate_latest_and_rerun(workdir, params_uninterrupted, env, preset):
  """Truncates the largest state file of checkpoint 5 (the last) and runs
  the same command again: it must resume from checkpoint 4, keep the
  damaged checkpoint aside and end with the uninterrupted parameters."""
  damaged = _largest_file(workdir / "checkpoints" / "5" / "state")
  data = damaged.read_bytes()
  damaged.write_bytes(data[: len(data) // 2])
  rerun = subprocess.run(
    _command(workdir, preset), env=env, capture_output=True, text=True,
    timeout=600,
  )  # fmt: skip
  assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr
  # One warning naming step and path, and no stack from Orbax's reads that
  # were in flight when the restore failed; resumed from checkpoint 4: only
  # step 5 ran.
  assert "Traceback" not in rerun.stdout + rerun.stderr, rerun.stderr
  latest = workdir / "checkpoints" / "5"
  assert f"cannot read checkpoint 5 ({latest})" in rerun.stdout
  assert "step 4/5" in rerun.stdout and "step 3/5" not in rerun.stdout
  # The damaged checkpoint is kept aside, not deleted.
  assert (workdir / "checkpoints_unreadable" / "5" / "state").exists()
  step, params_resumed = _final_params(workdir)
  assert step == 5
  for name, value in params_uninterrupted.items():
    np.testing.assert_array_equal(value, params_resumed[name], err_msg=name)
