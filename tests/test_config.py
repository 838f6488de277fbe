"""Config files, command-line overrides and their errors."""

import pathlib
import subprocess
import sys

import pytest

from stepjax import config_checks, config_utils

REPO = pathlib.Path(__file__).resolve().parent.parent


def _load(arg=None):
  import importlib.util

  spec = importlib.util.spec_from_file_location(
    "synthmed_tiny", REPO / "configs" / "synthmed_tiny.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_parse_arg_types_and_flags():
  args = config_utils.parse_arg(
    "algo=grpo,test,n=3,lr=0.5", algo="mrpo", test=False, n=1, lr=1.0
  )
  assert args.algo == "grpo" and args.test is True
  assert args.n == 3 and args.lr == 0.5


@pytest.mark.parametrize(
  "arg, message",
  [
    ("algoo=grpo", "unknown config arg 'algoo'"),
    ("n=three", "expected an integer"),
    ("algo", "needs a value"),
  ],
)
def test_parse_arg_errors(arg, message):
  with pytest.raises(ValueError, match=message):
    config_utils.parse_arg(arg, algo="mrpo", n=1)


def test_variants_and_lock():
  config = _load("algo=gdpo,test")
  assert config.rl.algorithm == "gdpo"
  assert config.model.preset == "tiny"
  config_checks.check(config)
  with pytest.raises(AttributeError):
    config.rl.not_a_key = 1  # locked: new keys are rejected


@pytest.mark.parametrize(
  "key, value, flag",
  [
    ("sampling.group_size", 1, "sampling.group_size"),
    ("rl.algorithm", "ppo", "rl.algorithm"),
    ("rl.tau", 1.5, "rl.tau"),
    ("rl.valid_step_advantage", "zero", "rl.valid_step_advantage"),
    ("data.token_buckets", (128, 96), "data.token_buckets"),
    ("data.on_bad_record", "ignore", "data.on_bad_record"),
    ("rl.process_source", "judge", "judge.base_url"),
    ("rl.label_noise", 0.7, "rl.label_noise"),
    ("judge.simulate", "oracle", "judge.simulate"),
    # The tiny config's 0.25 x its RL steps allow fewer fully judged ones.
    ("rl.hybrid_full_judge_steps", 10**6, "rl.hybrid_full_judge_steps"),
    ("rl.hybrid_full_judge_steps", -1, "rl.hybrid_full_judge_steps"),
    ("rl.hybrid_select", "confident", "rl.hybrid_select"),
    ("rl.value_min_confidence", 1.0, "rl.value_min_confidence"),
    ("rl.value_min_confidence", -0.1, "rl.value_min_confidence"),
  ],
)
def test_semantic_checks_name_the_flag(key, value, flag):
  config = _load()
  section, name = key.split(".")
  with config.unlocked():
    config[section][name] = value
  with pytest.raises(config_checks.ConfigError, match=f"--config.{flag}"):
    config_checks.check(config)


@pytest.mark.parametrize(
  "key, value", [("findings_scans", 8), ("grounding_weight", 0.5)]
)
def test_grounding_options_need_synthmed(key, value):
  config = _load()
  with config.unlocked():
    config.sft[key] = value
  config_checks.check(config)  # SynthMed: fine
  with config.unlocked():
    config.data.dataset = "vqa_rad"
    config.rl.process_source = "value_head"
  with pytest.raises(config_checks.ConfigError, match=f"--config.sft.{key}"):
    config_checks.check(config)


def _cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "stepjax", *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=120,
  )


def test_cli_rejects_mistyped_override_key():
  result = _cli("train", "--config.rl.algoritm=grpo")
  assert result.returncode != 0
  assert "algoritm" in result.stderr


def test_cli_rejects_wrong_type_override():
  result = _cli("train", "--config.sampling.group_size=many")
  assert result.returncode != 0
  assert "group_size" in result.stderr


def test_cli_unknown_command_lists_commands():
  result = _cli("trian")
  assert result.returncode != 0
  assert "train" in result.stderr and "unknown command" in result.stderr
