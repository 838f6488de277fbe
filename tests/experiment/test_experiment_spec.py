"""The experiment config format: loading, override parsing, validation,
and the job configs the grid derives from it (no training)."""

import dataclasses
import pathlib
import types

import ml_collections
import pytest

from stepjax import config_utils
from stepjax.experiment import cli, config_io, grid, spec

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs" / "experiments" / "example.py"


def _config(**changes):
  """The example's :test experiment config, unlocked, with `changes`."""
  config = config_utils.load_config_file(EXAMPLE, "test")
  config.unlock()
  for key, value in changes.items():
    if key in config:
      del config[key]  # a ConfigDict keeps a field's type otherwise
    config[key] = value
  return config


def test_example_loads_and_derives_job_configs(tmp_path):
  exp = spec.from_config(config_utils.load_config_file(EXAMPLE, "test"))
  assert exp.run_names == ["grpo", "mrpo"]
  assert exp.pairs() == [("mrpo", "grpo")]
  jobs = grid.jobs(exp, str(tmp_path))
  assert [j.label for j in jobs] == [
    "sft/seed_0",
    "sft/seed_1",
    "runs/grpo/seed_0",
    "runs/grpo/seed_1",
    "runs/mrpo/seed_0",
    "runs/mrpo/seed_1",
  ]
  sft, run = jobs[1].config, jobs[4].config
  assert (sft.seed, sft.train.steps, sft.sft.steps) == (1, 0, 2)
  assert (run.seed, run.sft.steps, run.train.steps) == (0, 0, 2)
  assert run.rl.algorithm == "mrpo" and jobs[2].config.rl.algorithm == "grpo"
  assert run.init_from == str(tmp_path / "sft" / "seed_0" / "checkpoints")
  assert run.train.eval_every == 1 and run.train.eval_before_rl is False
  assert jobs[4].log == str(tmp_path / "logs" / "mrpo_seed0.log")
  # config.json round-trips exactly (the worker trains what it reads).
  config_io.write(run, jobs[4].dir)
  again = config_io.read(jobs[4].dir)
  assert again.to_dict() == run.to_dict()
  assert isinstance(again.data.token_buckets, tuple)
  assert config_io.differences(run, again) == []


def test_overrides_are_typed_like_base():
  base = config_utils.load_config_file(REPO / "configs" / "synthmed_tiny.py")
  got = spec.parse_overrides(
    "rl.algorithm=grpo, rl.tau=0.5,train.steps=7,data.shuffle=false,"
    "data.token_buckets=(64, 96),rl.penalty='linear'",
    base,
    "r",
  )
  assert got == {
    "rl.algorithm": "grpo",
    "rl.tau": 0.5,
    "train.steps": 7,
    "data.shuffle": False,
    "data.token_buckets": (64, 96),
    "rl.penalty": "linear",
  }
  assert spec.parse_overrides("", base, "r") == {}
  config = spec.apply_overrides(base, got)
  assert config.data.token_buckets == (64, 96) and base.train.steps == 150


@pytest.mark.parametrize(
  "overrides, message",
  [
    ("rl.algoritm=grpo", "run 'bad': unknown config key 'rl.algoritm'"),
    ("rl.algoritm=grpo", "did you mean rl.algorithm"),
    ("rl.tau", "run 'bad': override 'rl.tau' is not key=value"),
    ("train.steps=many", "run 'bad': train.steps='many': expected an integer"),
    ("data.shuffle=maybe", "expected true or false"),
    ("data.token_buckets=96", "expected a tuple literal"),
    ("rl=grpo", "'rl' is a group of keys"),
    ("seed=3", "'seed' is set by the grid"),
    ("sft.steps=5", "'sft.steps' is set by the grid"),
    ("data.num_eval=9", "must be the same in every run"),
    ("model.preset=bench", "must be the same in every run"),
  ],
)
def test_override_errors_name_run_and_key(overrides, message):
  runs = (("grpo", "rl.algorithm=grpo"), ("bad", overrides))
  with pytest.raises(ValueError) as info:
    spec.from_config(_config(runs=runs))
  assert message in str(info.value)
  assert "\n" not in str(info.value)


def test_runs_may_differ_in_the_step_value_head_only():
  # Every RL run starts its head fresh, so the head's shape is per run;
  # the policy's model keys stay shared with the seed's SFT checkpoint.
  runs = (
    ("grpo", "rl.algorithm=grpo"),
    ("mean", "model.step_value_input=last+step_mean,model.step_value_hidden=8"),
  )
  exp = spec.from_config(_config(runs=runs, compare=()))
  job = next(
    j for j in grid.jobs(exp, "/tmp/w") if j.label.endswith("mean/seed_0")
  )
  assert job.config.model.step_value_input == "last+step_mean"
  assert job.config.model.step_value_hidden == 8
  assert job.config.init_from.endswith("sft/seed_0/checkpoints")


@pytest.mark.parametrize(
  "changes, message",
  [
    (dict(baseline="ppo"), "baseline 'ppo' is not a run"),
    (dict(compare=(("mrpo", "dpo"),)), "names 'dpo', which is not a run"),
    (dict(compare=(("mrpo", "mrpo"),)), "pairs 'mrpo' with itself"),
    (dict(seeds=(0, 0)), "`seeds` repeats a value"),
    (dict(seeds=()), "`seeds` must be a tuple of ints"),
    (dict(parallel=0), "`parallel` is 0; must be an int >= 1"),
    (dict(bootstrap_samples=10), "`bootstrap_samples` is 10"),
    (dict(runs=(("a", ""), ("a", ""))), "names ['a'] more than once"),
    (dict(runs=(("sft", ""),)), "run name 'sft'"),
    (dict(runs="grpo"), "tuple of (name, overrides) pairs"),
    (dict(extra=1), "unknown keys ['extra']"),
    (
      dict(runs=(("grpo", "rl.algorithm=grpo"), ("more", "train.steps=4"))),
      "equal sampling compute",
    ),
  ],
)
def test_experiment_errors_name_the_fix(changes, message):
  with pytest.raises(ValueError) as info:
    spec.from_config(_config(**changes))
  assert message in str(info.value)


def test_missing_keys_and_job_config_are_rejected():
  job = config_utils.load_config_file(REPO / "configs" / "synthmed_tiny.py")
  with pytest.raises(ValueError, match="job config, not an experiment"):
    spec.from_config(job)
  config = _config()
  del config["baseline"]
  with pytest.raises(ValueError, match=r"lacks \['baseline'\]"):
    spec.from_config(config)
  config = _config()
  config.base.sft.steps = 0
  with pytest.raises(ValueError, match="set base.sft.steps > 0"):
    spec.from_config(config)


def test_cli_rejects_a_job_config():
  # (Positional args are refused by stepjax.main: test_cli_errors.)
  flags = types.SimpleNamespace(workdir="/nonexistent")
  job = config_utils.load_config_file(REPO / "configs" / "synthmed_tiny.py")
  with pytest.raises(ValueError, match="configs/experiments/NAME.py"):
    cli.main([], job, flags)


def test_runs_may_be_a_configdict():
  runs = ml_collections.ConfigDict({"b": "rl.algorithm=grpo", "a": ""})
  exp = spec.from_config(_config(runs=runs, baseline="a"))
  assert exp.run_names == ["a", "b"]
  assert dataclasses.replace(exp, parallel=2).parallel == 2


@pytest.mark.parametrize(
  "name",
  sorted(p.stem for p in (REPO / "configs" / "experiments").glob("*.py")),
)
@pytest.mark.parametrize("variant", [None, "test"])
def test_every_shipped_experiment_config_is_valid(name, variant):
  """Each configs/experiments file, full and :test, passes the spec's
  checks (runs, overrides, compare pairs, equal sampling compute)."""
  path = REPO / "configs" / "experiments" / f"{name}.py"
  exp = spec.from_config(config_utils.load_config_file(path, variant))
  assert exp.run_names and exp.seeds
  if variant == "test":
    assert exp.base.model.preset == "tiny" and exp.base.mesh.data == 1
  elif name.startswith("synthmed"):
    assert exp.base.data.num_eval == 512
