"""Bad input on the command line: one line `error: ...`, exit code 2, no stack.

Each case runs the real `stepjax` command in a subprocess and checks the
exit code, that stderr holds exactly one line that is not a log line, that
this line names what is wrong, and that no traceback was printed. Most cases
fail before jax is imported (about a second each); the last few need the
session's tiny trained run.
"""

import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import xla_env

REPO = importlib.util.find_spec("stepjax").submodule_search_locations[0]
REPO = os.path.dirname(REPO)
TEST_CONFIG = os.path.join(REPO, "configs", "synthmed_tiny.py") + ":test"
_LOG_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages|E0000 )")


def _load(name, *path):
  spec = importlib.util.spec_from_file_location(
    name, os.path.join(REPO, "tests", *path)
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _tiny_run():
  return _load("tiny_run", "eval", "tiny_run.py")


def _fixtures():
  return _load("fixtures", "data", "readers", "fixtures.py")


def run_cli(*args, devices=1, cwd=None):
  return subprocess.run(
    [sys.executable, "-m", "stepjax", *args],
    capture_output=True,
    text=True,
    env=xla_env.env(devices),
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
  ("probe_without_checkpoint", ["probe"], ["--checkpoint"]),
  (
    "probe_missing_checkpoint",
    ["probe", "--checkpoint=runs/does_not_exist"],
    ["runs/does_not_exist"],
  ),
  ("config_not_python", ["train", "--config=README.md"], ["README.md"]),
  (
    "missing_suite_file",
    ["eval", "--suite=configs/nope.py", "--checkpoint=x"],
    ["--suite", "nope.py"],
  ),
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
  ("synthmed_num_zero", ["synthmed", "--num=0"], ["--num", ">= 1"]),
  ("synthmed_positional", ["synthmed", "extra"], ["positional", "extra"]),
  (
    "experiment_positional",
    ["experiment", "--config=configs/experiments/example.py:test", "x"],
    ["positional", "configs/experiments/NAME.py"],
  ),
  ("eval_positional", ["eval", "--checkpoint=x", "y"], ["positional", "y"]),
  (
    "generate_input_no_out",
    ["generate", "--checkpoint=x", "--input=list.json"],
    ["--out"],
  ),
  (
    "synthmed_nan_difficulty",
    ["synthmed", "--config.data.difficulty=nan"],
    ["data.difficulty", "finite"],
  ),
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


def test_internal_bug_keeps_its_stack():
  """Only user errors are cut to one line: any other exception is a bug
  and shows its traceback."""
  code = (
    "import sys\n"
    "from stepjax.data import cli\n"
    "def boom(*args):\n"
    "  raise RuntimeError('an internal bug')\n"
    "cli.main = boom\n"
    "sys.argv = ['stepjax', 'data', 'build-mrpo']\n"
    "from stepjax import main\n"
    "main.cli()\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=600,
  )
  assert result.returncode not in (0, 2), result.stderr
  assert "Traceback" in result.stderr
  assert "RuntimeError: an internal bug" in result.stderr
  assert "error: an internal bug" not in result.stderr


def test_synthmed_image_too_small_writes_nothing(tmp_path):
  out = tmp_path / "samples"
  result = run_cli(
    "synthmed", "--num=2", "--config.data.image_size=16", f"--out={out}"
  )
  assert_one_line_error(result, "data.image_size", ">= 32", "16")
  assert not out.exists()


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
  # --overwrite writes there (and leaves files export does not write).
  result = run_cli(
    "export", f"--config={TEST_CONFIG}", "--config.mesh.data=1",
    f"--checkpoint={tiny_run}", f"--out={out}", "--overwrite",
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  assert (out / "config.json").is_file()
  assert (out / "model.safetensors").is_file()
  assert (out / "notes.txt").read_text() == "keep me\n"


def test_resume_with_another_preset_names_both(tiny_run, tmp_path):
  workdir = tmp_path / "copy"
  shutil.copytree(tiny_run, workdir)
  result = run_cli(
    "train", f"--config={TEST_CONFIG}", "--config.mesh.data=1",
    "--config.model.preset=synthmed", f"--workdir={workdir}",
  )  # fmt: skip
  assert_one_line_error(result, "model.preset", "'tiny'", "'synthmed'")


def test_eval_with_another_preset_names_both(tiny_run, tmp_path):
  # Checked against the run info before any array is read: no Orbax
  # traceback from a restore stopped halfway.
  result = run_cli(
    "eval", f"--config={TEST_CONFIG}", "--config.mesh.data=1",
    "--config.model.preset=synthmed", f"--checkpoint={tiny_run}",
    f"--workdir={tmp_path / 'w'}",
  )  # fmt: skip
  assert_one_line_error(result, "model.preset", "'tiny'", "'synthmed'")


def _truncate_latest(run):
  """Cuts each array data file of the run's latest checkpoint to a tenth
  (evaluation reads only the parameters: they must be among the bytes
  cut); returns (latest step dir, previous step dir)."""
  root = run / "checkpoints"
  steps = [p for p in root.iterdir() if p.name.isdigit()]
  steps.sort(key=lambda p: int(p.name))
  assert len(steps) >= 2, steps
  data_files = [
    p
    for p in (steps[-1] / "state").rglob("*")
    if p.is_file() and p.parent.name == "d" and p.stat().st_size > 1000
  ]
  assert data_files
  for path in data_files:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 10])
  return steps[-1], steps[-2]


def test_eval_falls_back_from_a_truncated_latest_checkpoint(tiny_run, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(tiny_run, run)
  latest, previous = _truncate_latest(run)
  before = {str(p): p.read_bytes() for p in latest.rglob("*") if p.is_file()}
  result = run_cli(
    "eval", f"--config={TEST_CONFIG}", "--config.mesh.data=1",
    f"--checkpoint={run}", f"--workdir={tmp_path / 'w'}",
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Traceback" not in result.stderr + result.stdout
  assert f"cannot read checkpoint {latest.name} ({latest})" in result.stdout
  assert f"using checkpoint {previous.name} ({previous})" in result.stdout
  assert (tmp_path / "w" / "report.json").is_file()
  # Evaluation never moves, repairs or deletes the damaged checkpoint.
  after = {str(p): p.read_bytes() for p in latest.rglob("*") if p.is_file()}
  assert after == before
  # The damaged step named directly: one line naming its state folder.
  result = run_cli(
    "eval", f"--config={TEST_CONFIG}", "--config.mesh.data=1",
    f"--checkpoint={latest}", f"--workdir={tmp_path / 'w2'}",
  )  # fmt: skip
  assert_one_line_error(result, "cannot read", str(latest / "state"))


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


# The path policy through the command line: a record's image outside the
# data root stops the run on one line naming the record and where the path
# leads; nothing outside the root is read or copied.


def _secret(tmp_path, name, data):
  """tmp_path/outside/NAME holding `data`: never under a data root."""
  path = tmp_path / "outside" / name
  path.parent.mkdir(exist_ok=True)
  path.write_bytes(data)
  return path


def test_train_symlink_image_outside_the_root(tmp_path):
  fixtures = _fixtures()
  secret = _secret(tmp_path, "secret.jpg", fixtures.image_bytes("secret"))
  data = tmp_path / "data"
  (data / "imgs").mkdir(parents=True)
  (data / "imgs" / "a.jpg").write_bytes(fixtures.image_bytes("a"))
  (data / "imgs" / "evil.jpg").symlink_to(secret)
  rows = [
    {"id": f"r{i}", "image": image, "problem": "Which?", "solution": "x"}
    for i, image in enumerate(["imgs/a.jpg", "imgs/evil.jpg"])
  ]
  (data / "train.json").write_text(json.dumps(rows))
  result = run_cli(
    "train", f"--config={TEST_CONFIG}", "--config.data.dataset=mrpo_json",
    f"--config.data.path={data / 'train.json'}",
    f"--config.data.eval_path={data / 'train.json'}",
    "--config.rl.process_source=value_head", f"--workdir={tmp_path / 'w'}",
  )  # fmt: skip
  assert_one_line_error(
    result, "record r1", "imgs/evil.jpg", str(secret), "outside the data root"
  )


def test_train_pmc_vqa_figure_path_with_dotdot(tmp_path):
  fixtures = _fixtures()
  secret = _secret(tmp_path, "secret.jpg", fixtures.image_bytes("secret"))
  root = fixtures.write_pmc_vqa(tmp_path / "pmc")
  escaping = "../../outside/secret.jpg"
  for name in ("train.csv", "test_clean.csv"):
    with open(root / name, newline="") as f:
      rows = list(csv.reader(f))
    rows[1][0] = escaping  # the first record's Figure_path
    with open(root / name, "w", newline="") as f:
      csv.writer(f).writerows(rows)
  result = run_cli(
    "train", f"--config={TEST_CONFIG}", "--config.data.dataset=pmc_vqa",
    f"--config.data.path={root}", "--config.data.train_split=train",
    "--config.data.eval_split=test_clean",
    "--config.rl.process_source=value_head", f"--workdir={tmp_path / 'w'}",
  )  # fmt: skip
  assert_one_line_error(
    result, "pmc_vqa/train/0", escaping, str(secret), "outside the data root"
  )


def test_build_mrpo_refuses_to_copy_a_file_outside_the_root(tmp_path):
  fixtures = _fixtures()
  secret = _secret(tmp_path, "secret.txt", b"top secret: not an image\n")
  raw = tmp_path / "raw"
  fixtures.write_vqa_rad(raw / "VQA_RAD")
  fixtures.write_medthink(raw / "MedThink")
  json_file = raw / "VQA_RAD" / "VQA_RAD Dataset Public.json"
  items = json.loads(json_file.read_text())
  items[0]["image_name"] = "../../../outside/secret.txt"
  json_file.write_text(json.dumps(items))
  out = tmp_path / "out"
  result = run_cli(
    "data", "build-mrpo", f"--out={out}", "--",
    f"--vqa_rad={raw / 'VQA_RAD'}", f"--medthink={raw / 'MedThink'}",
  )  # fmt: skip
  assert_one_line_error(
    result, "vqa_rad/train/0", str(secret), "outside the data root"
  )
  # Nothing under --out holds the secret's bytes (out may not exist).
  secret_bytes = secret.read_bytes()
  assert all(
    p.read_bytes() != secret_bytes for p in out.rglob("*") if p.is_file()
  )
