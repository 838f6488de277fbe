"""Bad input on the command line: one line `error: ...`, exit code 2, no stack.

Each case runs the real `stepjax` command in a subprocess and checks the
exit code, that stderr holds exactly one line that is not a log line, that
this line names what is wrong, and that no traceback was printed. Most cases
fail before jax is imported (about a second each); the last few need the
session's tiny trained run.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = importlib.util.find_spec("stepjax").submodule_search_locations[0]
REPO = os.path.dirname(REPO)
TEST_CONFIG = os.path.join(REPO, "configs", "synthmed_tiny.py") + ":test"
_LOG_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages|E0000 )")


def _tiny_run():
  spec = importlib.util.spec_from_file_location(
    "tiny_run", os.path.join(REPO, "tests", "eval", "tiny_run.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_cli(*args, devices=1, cwd=None):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.run(
    [sys.executable, "-m", "stepjax", *args],
    capture_output=True,
    text=True,
    env=env,
    cwd=cwd or REPO,
    timeout=600,
  )


def assert_one_line_error(result, *names):
  """Exit code 2, one `error: ...` line naming `names`, no traceback."""
  assert "Traceback" not in result.stderr + result.stdout, result.stderr
  lines = [
    line
    for line in result.stderr.splitlines()
    if line.strip() and not _LOG_LINE.match(line)
  ]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: "), lines
  for name in names:
    assert name in lines[0], (name, lines[0])
  assert result.returncode == 2, (result.returncode, result.stderr)
  return lines[0]


# (case id, argv, names the error line must contain)
FAST_CASES = [
  ("unknown_command", ["frobnicate"], ["frobnicate", "train"]),
  ("unknown_key", ["train", "--config.nosuch=1"], ["nosuch"]),
  (
    "misspelt_key",
    ["train", "--config.rl.algoritm=grpo"],
    ["rl.algoritm", "did you mean rl.algorithm"],
  ),
  (
    "bad_type",
    ["train", "--config.optim.learning_rate=abc"],
    ["learning_rate", "abc"],
  ),
  ("missing_config_file", ["train", "--config=configs/nope.py"], ["nope.py"]),
  ("config_not_python", ["train", "--config=README.md"], ["README.md"]),
  (
    "unknown_config_variant",
    ["train", "--config=configs/synthmed_tiny.py:foo=1"],
    ["foo", "algo"],
  ),
  (
    "experiment_config_to_train",
    ["train", "--config=configs/experiments/synthmed.py"],
    ["experiment config", "job config"],
  ),
  (
    "negative_learning_rate",
    ["train", "--config.optim.learning_rate=-0.1"],
    ["optim.learning_rate", "-0.1", "> 0"],
  ),
  (
    "nan_learning_rate",
    ["train", "--config.optim.learning_rate=nan"],
    ["optim.learning_rate", "finite"],
  ),
  (
    "checkpoint_every_zero",
    ["train", "--config.train.checkpoint_every=0"],
    ["train.checkpoint_every"],
  ),
  (
    "plan_mesh_tensor_zero",
    ["plan", "--config.mesh.tensor=0"],
    ["mesh.tensor"],
  ),
  (
    "misspelt_dataset",
    ["train", "--config.data.dataset=synthmd"],
    ["data.dataset", "did you mean synthmed"],
  ),
  ("unknown_algorithm", ["train", "--config.rl.algorithm=ppo"], ["algorithm"]),
  (
    "group_size_one",
    ["train", "--config.sampling.group_size=1"],
    ["sampling.group_size"],
  ),
  (
    "judge_without_endpoint",
    ["train", "--config.rl.process_source=judge"],
    ["judge.base_url"],
  ),
  ("train_positional", ["train", "extra"], ["positional", "extra"]),
  ("eval_no_checkpoint", ["eval"], ["--checkpoint"]),
  ("generate_no_image", ["generate", "--checkpoint=x"], ["--image"]),
  ("export_no_out", ["export", "--checkpoint=x"], ["--out"]),
  ("plan_bad_chip", ["plan", "--chip=tpu9"], ["--chip", "tpu9"]),
  ("bench_unknown", ["bench", "warp"], ["bench"]),
  ("data_unknown_tool", ["data", "shred"], ["shred"]),
  (
    "experiment_job_config",
    ["experiment", "--config=configs/synthmed_tiny.py"],
    ["experiment"],
  ),
  (
    "experiment_unknown_run",
    ["experiment", "--config=configs/experiments/synthmed.py:only=zz"],
    ["zz", "unknown runs"],
  ),
  ("bad_log_level_flag", ["train", "--log_level=loud"], ["log_level"]),
]


@pytest.mark.parametrize(
  "argv,names", [c[1:] for c in FAST_CASES], ids=[c[0] for c in FAST_CASES]
)
def test_bad_flags_give_one_line(argv, names):
  assert_one_line_error(run_cli(*argv), *names)


def test_debug_log_level_shows_the_stack():
  result = run_cli(
    "train", "--config.optim.learning_rate=-0.1", "--log_level=debug"
  )
  assert result.returncode != 0
  assert "Traceback" in result.stderr
  assert "optim.learning_rate" in result.stderr


def test_mrpo_json_without_path(tmp_path):
  result = run_cli(
    "train", f"--config={TEST_CONFIG}", "--config.data.dataset=mrpo_json",
    "--config.rl.process_source=value_head", f"--workdir={tmp_path / 'w'}",
  )  # fmt: skip
  assert_one_line_error(result, "data.path")


def test_missing_data_file(tmp_path):
  result = run_cli(
    "train", f"--config={TEST_CONFIG}", "--config.data.dataset=mrpo_json",
    f"--config.data.path={tmp_path / 'absent.json'}",
    f"--config.data.eval_path={tmp_path / 'absent.json'}",
    f"--workdir={tmp_path / 'w'}",
  )  # fmt: skip
  assert_one_line_error(result, "absent.json")


def test_batch_not_divisible_by_devices(tmp_path):
  result = run_cli(
    "train", f"--config={TEST_CONFIG}", f"--workdir={tmp_path / 'w'}",
    devices=3,
  )  # fmt: skip
  assert_one_line_error(result, "sft.batch_size=4", "3 batch shards")


def test_missing_init_from_is_not_created(tmp_path):
  missing = tmp_path / "no_such_run"
  result = run_cli(
    "train", f"--config={TEST_CONFIG}", f"--workdir={tmp_path / 'w'}",
    f"--config.init_from={missing}", "--config.mesh.data=1",
  )  # fmt: skip
  assert_one_line_error(result, "init_from", str(missing))
  assert not missing.exists()


def test_generate_input_list_missing(tmp_path):
  result = run_cli(
    "generate", "--checkpoint=x", f"--input={tmp_path / 'list.json'}",
    f"--out={tmp_path / 'out.jsonl'}",
  )  # fmt: skip
  assert_one_line_error(result)


def test_eval_missing_checkpoint(tmp_path):
  result = run_cli(
    "eval", f"--config={TEST_CONFIG}", f"--checkpoint={tmp_path / 'gone'}",
    f"--workdir={tmp_path / 'w'}",
  )  # fmt: skip
  assert_one_line_error(result, "--checkpoint", "gone")


# Cases that need a trained run (the session's tiny run).


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  return _tiny_run().run_dir(tmp_path_factory)


def test_export_refuses_a_non_empty_directory(tiny_run, tmp_path):
  out = tmp_path / "hf"
  out.mkdir()
  (out / "notes.txt").write_text("keep me\n")
  result = run_cli(
    "export", f"--config={TEST_CONFIG}", "--config.mesh.data=1",
    f"--checkpoint={tiny_run}", f"--out={out}",
  )  # fmt: skip
  assert_one_line_error(result, "not empty", "--overwrite")
  assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_resume_with_another_preset_names_both(tiny_run, tmp_path):
  workdir = tmp_path / "copy"
  shutil.copytree(tiny_run, workdir)
  result = run_cli(
    "train", f"--config={TEST_CONFIG}", "--config.mesh.data=1",
    "--config.model.preset=synthmed", f"--workdir={workdir}",
  )  # fmt: skip
  assert_one_line_error(result, "model.preset", "'tiny'", "'synthmed'")


def test_generate_missing_image(tiny_run, tmp_path):
  result = run_cli(
    "generate", f"--config={TEST_CONFIG}", "--config.mesh.data=1",
    f"--checkpoint={tiny_run}", f"--image={tmp_path / 'nope.png'}",
    "--question=Which side?",
  )  # fmt: skip
  assert_one_line_error(result, "nope.png")


def test_eval_unknown_split(tiny_run, tmp_path):
  result = run_cli(
    "eval", f"--config={TEST_CONFIG}", "--config.mesh.data=1",
    f"--checkpoint={tiny_run}", "--split=validation",
    f"--workdir={tmp_path / 'w'}",
  )  # fmt: skip
  assert_one_line_error(result, "--split", "validation")


def test_mrpo_json_nan_answer(tmp_path):
  rows = [
    {
      "id": f"r{i}",
      "image": "img.png",
      "question": "Which kidney has the larger lesion?",
      "answer": float("nan"),
    }
    for i in range(4)
  ]
  data = tmp_path / "data.json"
  data.write_text(json.dumps(rows))  # json writes NaN as the bare token
  result = run_cli(
    "train", f"--config={TEST_CONFIG}", "--config.data.dataset=mrpo_json",
    f"--config.data.path={data}", f"--config.data.eval_path={data}",
    "--config.rl.process_source=value_head", f"--workdir={tmp_path / 'w'}",
  )  # fmt: skip
  assert_one_line_error(result, "r0")


def test_build_mrpo_documented_form_reaches_the_reader(tmp_path):
  # Flags after `--` as the README writes them are the tool's flags.
  missing = tmp_path / "no_vqa_rad"
  result = run_cli(
    "data", "build-mrpo", f"--out={tmp_path / 'out'}", "--",
    f"--vqa_rad={missing}", f"--medthink={tmp_path / 'no_medthink'}",
  )  # fmt: skip
  assert_one_line_error(result, str(missing))
  assert not (tmp_path / "out").exists()


def test_build_mrpo_missing_flag_is_one_line(tmp_path):
  result = run_cli(
    "data", "build-mrpo", f"--out={tmp_path / 'out'}", "--vqa_rad=x"
  )
  assert_one_line_error(result, "--medthink")
