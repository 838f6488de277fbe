"""`stepjax experiment` end to end on configs/experiments/example.py:test
(2 runs x 2 seeds of the tiny model): results, skip on rerun, resume of a
partial run in a worker subprocess, and the errors a user can cause.

The grid trains through the real command line in a subprocess whose XLA
compiles without LLVM optimisation: most of a tiny run's time is compiling,
and that halves it without touching this test session's own XLA flags. The
compiled executables persist in pytest's cache directory (.pytest_cache),
so later sessions load them instead of compiling (keys cover the code: a
change compiles again).
"""

import dataclasses
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import xla_env

from stepjax import config_utils
from stepjax.experiment import cli, grid, runner, spec
from stepjax.train import metrics

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "experiments" / "example.py"
FAST_XLA = xla_env.flags(1)


def _experiment(**base_changes):
  config = config_utils.load_config_file(CONFIG, "test")
  config.unlock()
  for key, value in base_changes.items():
    section, name = key.split(".")
    config.base[section][name] = value
  return spec.from_config(config)


@pytest.fixture(scope="module")
def jax_cache(request, tmp_path_factory):
  """A compilation cache directory that outlives the session if it can."""
  cache = getattr(request.config, "cache", None)
  if cache is None:  # -p no:cacheprovider
    return str(tmp_path_factory.mktemp("jax_cache"))
  return str(cache.mkdir("stepjax_experiment_jax_cache"))


def _cli(workdir, cache_dir, variant="test"):
  """`stepjax experiment` on the example; returns its stdout."""
  env = dict(
    os.environ,
    XLA_FLAGS=FAST_XLA,
    JAX_PLATFORMS="cpu",
    JAX_COMPILATION_CACHE_DIR=cache_dir,
  )
  result = subprocess.run(
    [sys.executable, "-m", "stepjax", "experiment",
     f"--config={CONFIG}:{variant}", f"--workdir={workdir}"],
    env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  return result.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory, jax_cache):
  """The whole grid, trained once for this module."""
  workdir = str(tmp_path_factory.mktemp("grid"))
  progress = _cli(workdir, jax_cache)
  res = json.loads((pathlib.Path(workdir) / "results.json").read_text())
  return _experiment(), workdir, res, progress


def _files(workdir):
  """path -> mtime of every file the training wrote."""
  root = pathlib.Path(workdir)
  return {
    str(p): p.stat().st_mtime_ns
    for top in ("sft", "runs")
    for p in (root / top).rglob("*")
    if p.is_file()
  }


def test_grid_trains_every_job_and_writes_results(trained):
  exp, workdir, res, progress = trained
  root = pathlib.Path(workdir)
  for label in ("sft/seed_0", "runs/grpo/seed_1", "runs/mrpo/seed_0"):
    assert f"start  {label}" in progress and f"trained {label}" in progress
  assert "(6/6; ETA 0s)" in progress
  assert sorted(res["groups"]) == ["grpo", "mrpo", "sft"]
  assert res["groups"]["mrpo"]["per_seed"].keys() == {"0", "1"}
  assert [(p["a"], p["b"]) for p in res["pairs"]] == [("mrpo", "grpo")]
  assert res["experiment"]["eval_scans"] == 4
  assert res["experiment"]["rl_steps"] == [2]
  command = f"stepjax experiment --config={CONFIG}:test --workdir={workdir}"
  assert res["experiment"]["command"] == command
  markdown = (root / "results.md").read_text()
  assert command in markdown and "| mrpo - grpo |" in markdown
  plots = sorted(p.name for p in (root / "plots").iterdir())
  assert plots == ["curves.png", "far.png", "ffp.png", "periodic_eval.png"]
  for job in grid.jobs(exp, workdir):
    saved = json.loads((pathlib.Path(job.dir) / "config.json").read_text())
    assert saved["seed"] == job.seed
    assert grid.read_timing(job.dir)["wall_s"] > 0
    assert pathlib.Path(job.log).exists()
    evals = sorted(p.name for p in (pathlib.Path(job.dir) / "eval").iterdir())
    # Every training run also draws its own figures into eval/plots/.
    assert "plots" in evals
    evals.remove("plots")
    if job.kind == grid.SFT:
      assert saved["train"]["steps"] == 0 and evals == ["final"]
    else:
      assert saved["sft"]["steps"] == 0
      assert saved["init_from"].endswith(f"sft/seed_{job.seed}/checkpoints")
      # No "before_rl" eval (the SFT start is evaluated once, in sft/);
      # eval_every=1 adds one periodic eval.
      assert evals == ["final", "rl_step_1"]
      steps = [r["step"] for r in metrics.read_metrics(job.dir)]
      assert steps == [0, 1]
  assert res["periodic"]["grpo"]["steps"] == [0, 1, 2]


def test_second_invocation_trains_nothing(trained):
  exp, workdir, res, _ = trained
  before = _files(workdir)
  markdown = (pathlib.Path(workdir) / "results.md").read_text()
  grid_record = (pathlib.Path(workdir) / "grid.json").read_text()
  out = io.StringIO()
  outcomes = runner.run_grid(exp, workdir, out)
  assert {o.status for o in outcomes} == {"skipped"}
  assert "6 done already, 0 to train" in out.getvalue()
  cli.write_results(exp, workdir, res["experiment"]["command"])
  assert _files(workdir) == before
  assert (pathlib.Path(workdir) / "results.md").read_text() == markdown
  assert (pathlib.Path(workdir) / "grid.json").read_text() == grid_record


def test_partial_run_resumes_in_a_worker(
  trained, tmp_path, monkeypatch, jax_cache
):
  """A run killed after its checkpoint of step 1: the next invocation (two
  workers) trains only that run, from that checkpoint, in a subprocess."""
  exp, workdir, _, _ = trained
  copy = tmp_path / "grid"
  shutil.copytree(workdir, copy)
  victim = pathlib.Path(grid.run_dir(str(copy), "mrpo", 1))
  shutil.rmtree(victim / "eval" / "final")
  shutil.rmtree(victim / "checkpoints" / "2")
  metrics_before = (victim / "metrics.jsonl").read_text().splitlines()
  # The worker inherits these, so the compilation cache serves it.
  monkeypatch.setenv("XLA_FLAGS", FAST_XLA)
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax_cache)
  out = io.StringIO()
  outcomes = runner.run_grid(
    dataclasses.replace(exp, parallel=2), str(copy), out
  )
  status = {o.job.label: o.status for o in outcomes}
  assert status.pop("runs/mrpo/seed_1") == "trained", out.getvalue()
  assert set(status.values()) == {"skipped"}
  progress = out.getvalue()
  assert "5 done already, 1 to train, 2 at a time" in progress
  assert "resume runs/mrpo/seed_1 (from step 1)" in progress
  assert grid.is_done(str(victim))
  after = (victim / "metrics.jsonl").read_text().splitlines()
  assert after[0] == metrics_before[0]  # step 0 kept, step 1 redone
  assert [json.loads(line)["step"] for line in after] == [0, 1]
  attempts = grid.read_timing(str(victim))["attempts"]
  assert [a["mode"] for a in attempts] == ["in-process", "subprocess"]
  assert "eval final" in (copy / "logs" / "mrpo_seed1.log").read_text()
  invocations = json.loads((copy / "grid.json").read_text())["invocations"]
  assert [i["trained"] for i in invocations] == [6, 1]


def test_user_errors_fail_before_training(trained, tmp_path):
  exp, workdir, _, _ = trained
  copy = tmp_path / "grid"
  shutil.copytree(workdir, copy)
  before = _files(str(copy))
  changed = _experiment(**{"rl.tau": 0.5})
  with pytest.raises(
    ValueError, match=r"trained with another config .*rl\.tau"
  ):
    runner.run_grid(changed, str(copy), io.StringIO())
  shutil.rmtree(copy / "sft" / "seed_0" / "checkpoints")
  with pytest.raises(ValueError, match="missing SFT checkpoint .*delete"):
    runner.run_grid(exp, str(copy), io.StringIO())
  assert _files(str(copy)).items() <= before.items()
