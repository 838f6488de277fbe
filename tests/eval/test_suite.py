"""`stepjax eval --suite`: the paper's eight benchmarks, one table.

Fixtures in the real on-disk layout of every dataset of
configs/suites/paper.py (the reader fixture builders of
tests/data/readers/) and the session's tiny SynthMed run.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys
import types

import pytest
import xla_env

from stepjax import config_utils
from stepjax.errors import InputError, MissingInputError
from stepjax.eval import report as report_lib
from stepjax.eval import suite, suite_table

REPO = pathlib.Path(__file__).resolve().parents[2]
PAPER = REPO / "configs" / "suites" / "paper.py"


def _load(name: str, path: pathlib.Path):
  """A helper module of the test tree, loaded by path (not a package)."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tiny_run = _load("tiny_run", pathlib.Path(__file__).with_name("tiny_run.py"))
chat_server = _load(
  "suite_chat_server", pathlib.Path(__file__).with_name("chat_server.py")
)
fixtures = _load(
  "reader_fixtures", REPO / "tests" / "data" / "readers" / "fixtures.py"
)

# The records each dataset keeps: its test split without yes/no answers
# (SLAKE English only), in file order.
EXPECTED_IDS = {
  "vqa_rad": ["vqa_rad/test/4", "vqa_rad/test/6"],
  "slake": ["slake/test/30"],
  "pathvqa": ["pathvqa/test/0"],
  "pmc_vqa": ["pmc_vqa/test_clean/0", "pmc_vqa/test_clean/1"],
  "vqa_med": ["vqa_med_2019/test/1", "vqa_med_2019/test/2"],
  "quilt_vqa": ["quilt_vqa/0"],
  "rad_vqa": ["rad-1", "rad-2"],
  "mimic_vqa": ["mimic_cxr_vqa/test/13280", "mimic_cxr_vqa/test/13281"],
}
LABELS = ["VQA-RAD", "SLAKE", "PathVQA", "PMC-VQA", "VQA-Med", "Quilt-VQA",
          "Rad-VQA", "MIMIC-VQA"]  # fmt: skip


def write_rad_vqa(path: pathlib.Path) -> pathlib.Path:
  """Rad-VQA as the suite reads it: an MRPO json file and its images."""
  (path.parent / "images").mkdir(parents=True)
  rows = [
    ("rad-1", "Which organ is enlarged?", "spleen"),
    ("rad-2", "What is the imaging modality?", "mri"),
    ("rad-3", "Is the scan normal?", "yes"),
  ]
  for rid, *_ in rows:
    (path.parent / "images" / f"{rid}.jpg").write_bytes(
      fixtures.image_bytes(rid)
    )
  items = [
    {"id": rid, "image": f"images/{rid}.jpg", "problem": q, "solution": a}
    for rid, q, a in rows
  ]
  path.write_text(json.dumps(items))
  return path


def write_benchmarks(root: pathlib.Path) -> pathlib.Path:
  """Every dataset of configs/suites/paper.py under `root`, as it ships."""
  fixtures.write_vqa_rad(root / "VQA_RAD")
  fixtures.write_slake(root / "Slake1.0")
  fixtures.write_pathvqa(root / "path-vqa")
  fixtures.write_pmc_vqa(root / "PMC-VQA")
  fixtures.write_vqa_med(root / "VQA-Med-2019-test")
  fixtures.write_quilt_vqa(root / "quilt_vqa")
  write_rad_vqa(root / "rad_vqa" / "test.json")
  fixtures.write_mimic_cxr_vqa(root / "MIMIC-CXR-VQA")
  return root


def paper_suite(root, **overrides):
  suite_config = config_utils.load_config_file(PAPER, f"root={root}")
  return config_utils.with_updates(suite_config, overrides)


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
  return write_benchmarks(tmp_path_factory.mktemp("medvqa"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return tiny_run.run_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def evaluated(benchmarks, run_dir, tmp_path_factory):
  """The paper suite over every reader's fixture, two checkpoints."""
  out = tmp_path_factory.mktemp("suite_out")
  table = suite.run(
    tiny_run.config(),
    paper_suite(benchmarks),
    [run_dir, run_dir],
    str(out),
  )
  return out, table


def _records(out, checkpoint, name):
  return report_lib.load_records(str(out / checkpoint / name))


def test_every_reader_evaluated_with_the_average_by_hand(evaluated):
  out, table = evaluated
  for name in ("suite.json", "suite.md"):
    assert (out / name).stat().st_size > 0
  assert (out / "suite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert json.loads((out / "suite.json").read_text()) == table
  assert [d["label"] for d in table["datasets"]] == LABELS
  assert all(d["status"] == "ok" for d in table["datasets"])
  first = table["checkpoints"][0]
  assert first["name"] == "tiny_run"
  accuracies, in_dist, out_dist = [], [], []
  for d in table["datasets"]:
    name = d["name"]
    records = _records(out, "tiny_run", name)
    assert [r["id"] for r in records] == EXPECTED_IDS[name]
    assert d["num_selected"] == len(EXPECTED_IDS[name])
    # By hand from records.jsonl: correct answers / records.
    accuracy = sum(r["correct"] for r in records) / len(records)
    row = first["per_dataset"][name]
    assert row["num_records"] == len(records)
    assert row["accuracy"] == pytest.approx(accuracy)
    report = report_lib.load_report(str(out / "tiny_run" / name))
    assert row["accuracy"] == report["accuracy"]
    assert report["meta"]["dataset"] == d["dataset"]
    assert report["meta"]["suite"] == "paper"
    assert row["step_validity"] is None  # no judge: steps stay unlabelled
    assert not (out / "tiny_run" / name / "ffp.png").exists()  # one plot
    accuracies.append(accuracy)
    (in_dist if d["group"] == "in" else out_dist).append(accuracy)
  assert first["average"]["accuracy"] == pytest.approx(sum(accuracies) / 8)
  assert first["average_count"]["accuracy"] == 8
  groups = first["group_average"]
  assert groups["in"]["accuracy"] == pytest.approx(sum(in_dist) / 3)
  assert groups["out"]["accuracy"] == pytest.approx(sum(out_dist) / 5)
  assert table["metrics"] == ["accuracy"]


def test_compare_puts_checkpoints_side_by_side(evaluated):
  out, table = evaluated
  names = [c["name"] for c in table["checkpoints"]]
  assert names == ["tiny_run", "tiny_run-2"]
  a, b = table["checkpoints"]
  assert a["per_dataset"] == {
    k: {**v, "report": v["report"].replace("tiny_run-2", "tiny_run")}
    for k, v in b["per_dataset"].items()
  }  # the same checkpoint twice: the same results
  md = (out / "suite.md").read_text()
  header = "| Checkpoint | " + " | ".join(LABELS)
  assert header + " | Avg in | Avg out | Avg (8/8) |" in md
  avg = f"{100 * a['average']['accuracy']:.1f}"
  assert "| tiny_run-2 | " in md and md.count(f" {avg} |") >= 2
  assert "## tiny_run (" in md and "| Average | " in md


def judge_says_match(reference: str) -> bool:
  """The scripted answer judge: a match iff the reference sorts before m."""
  return reference.lower() < "m"


def test_judged_accuracy_column_follows_the_answer_judge(
  benchmarks, run_dir, tmp_path, monkeypatch
):
  """With eval.answer_judge=judge, the table's judged column and its
  average are the scripted judge's verdicts on each dataset's references."""

  def reply(body):
    reference = chat_server.field(
      chat_server.user_text(body), "Reference answer"
    )
    return "ok", json.dumps({"match": int(judge_says_match(reference))})

  server = chat_server.ChatServer(reply)
  monkeypatch.setenv(chat_server.KEY_ENV, chat_server.SECRET)
  config = tiny_run.config(
    **{
      "eval.answer_judge": "judge",
      "judge.base_url": server.url,
      "judge.model": "answer-judge",
      "judge.api_key_env": chat_server.KEY_ENV,
    }
  )
  try:
    table = suite.run(config, paper_suite(benchmarks), [run_dir], tmp_path)
  finally:
    server.close()
  assert "accuracy_judged" in table["metrics"]
  row = table["checkpoints"][0]
  by_hand = []
  for d in table["datasets"]:
    records = _records(tmp_path, "tiny_run", d["name"])
    golds = [r["gold_answer"] for r in records]
    judged = sum(judge_says_match(g) for g in golds) / len(golds)
    assert row["per_dataset"][d["name"]]["accuracy_judged"] == judged
    by_hand.append(judged)
  assert 0 < sum(by_hand) < len(by_hand)  # neither all nor none matched
  assert row["average"]["accuracy_judged"] == pytest.approx(
    sum(by_hand) / len(by_hand)
  )
  assert server.calls["ok"] == sum(d["num_selected"] for d in table["datasets"])
  md = (tmp_path / "suite.md").read_text()
  assert "## Accuracy (answer judge)" in md
  avg = f"{100 * row['average']['accuracy_judged']:.1f}"
  assert f"| {avg} |" in suite_table.matrix(table, "accuracy_judged")


def test_table_arithmetic_by_hand():
  """Missing datasets, judged accuracy on some sets, labelled steps."""
  datasets = [
    {"name": n, "label": n.upper(), "group": g, "status": s, "split": "test",
     "dataset": n, "path": f"/d/{n}", "reason": "" if s == "ok" else "gone"}
    for n, g, s in [("a", "in", "ok"), ("b", "in", "ok"),
                    ("c", "out", "ok"), ("d", "out", "missing")]
  ]  # fmt: skip

  def report(acc, judged=None, valid=None, early=None):
    return {
      "num_records": 4,
      "accuracy": acc,
      "accuracy_judged": judged,
      "step_validity": valid,
      "ffp": {"early": early, "mid": None, "late": None},
      "meta": {"checkpoint": "runs/x", "checkpoint_step": 7},
    }

  results = {
    "x": {
      "a": report(0.5, judged=0.75, valid=0.5, early=1.0),
      "b": report(0.25, judged=0.5),
      "c": report(1.0, valid=0.25, early=0.5),
      "d": None,
    }
  }
  table = suite_table.build("t", "", datasets, results)
  x = table["checkpoints"][0]
  assert x["per_dataset"]["d"] == {"status": "missing"}
  assert x["average"]["accuracy"] == pytest.approx((0.5 + 0.25 + 1.0) / 3)
  assert x["average_count"]["accuracy"] == 3
  assert x["average"]["accuracy_judged"] == pytest.approx((0.75 + 0.5) / 2)
  assert x["average_count"]["accuracy_judged"] == 2
  assert x["average"]["step_validity"] == pytest.approx(0.375)
  assert x["average"]["ffp_early"] == pytest.approx(0.75)
  assert x["average"]["ffp_mid"] is None
  assert x["group_average"]["in"]["accuracy"] == pytest.approx(0.375)
  assert x["group_average"]["out"]["accuracy"] == pytest.approx(1.0)
  assert x["checkpoint_step"] == 7
  assert table["metrics"] == [
    "accuracy",
    "accuracy_judged",
    "step_validity",
    "ffp_early",
  ]
  assert suite_table.matrix(table, "accuracy").splitlines()[2] == (
    "| x | 50.0 | 25.0 | 100.0 | missing | 37.5 | 100.0 | 58.3 |"
  )
  assert "| Avg in | Avg out | Avg (2/4) |" in suite_table.matrix(
    table, "accuracy_judged"
  )
  md = suite_table.markdown(table)
  assert "3 of 4 datasets evaluated" in md and "- D: gone" in md
  assert "## Accuracy (answer judge)" in md and "## Step validity" in md
  assert "| D | out | test | missing | missing |" in md


# ---------------------------------------------------------------- errors
def test_suite_config_errors_name_the_flag(benchmarks):
  cases = [
    ({"datasets.slake.splt": "test"}, "--suite.datasets.slake.splt: unknown"),
    ({"datasets.slake.dataset": "slak"}, "did you mean slake?"),
    ({"datasets.slake.dataset": "synthmed"}, "not a dataset read from disk"),
    ({"datasets.slake.limit": -1}, "--suite.datasets.slake.limit=-1"),
    ({"order": ("slake", "vqa_rad")}, "--suite.order names no unknown"),
    ({"datasets.slake.path": ""}, "--suite.datasets.slake.path must be set"),
  ]
  for overrides, message in cases:
    with pytest.raises(InputError, match=None) as info:
      suite.entries(_with(paper_suite(benchmarks), overrides))
    assert message in str(info.value), (overrides, str(info.value))


def _with(config, overrides):
  config = config_utils.with_updates(config, {})
  with config.unlocked():
    for key, value in overrides.items():
      *parents, last = key.split(".")
      node = config
      for name in parents:
        node = node[name]
      node[last] = value
  return config


def test_a_broken_copy_fails_before_any_model_work(benchmarks, tmp_path):
  broken = tmp_path / "Slake1.0"
  broken.mkdir()  # exists, but holds no test.json
  config = paper_suite(benchmarks, **{"datasets.slake.path": str(broken)})
  with pytest.raises(InputError) as info:
    suite.run(tiny_run.config(), config, [str(tmp_path / "no_ckpt")], "x")
  message = str(info.value)
  assert message.startswith(f"--suite.datasets.slake (slake at {broken}): ")
  assert "test.json" in message


def test_nothing_to_evaluate(benchmarks, tmp_path):
  with pytest.raises(MissingInputError, match="no dataset of the suite"):
    suite.run(tiny_run.config(), paper_suite(tmp_path), ["ckpt"], "x")
  with pytest.raises(InputError, match="needs --checkpoint"):
    suite.run(tiny_run.config(), paper_suite(benchmarks), [], "x")
  only_yes_no = paper_suite(benchmarks, **{"datasets.quilt_vqa.limit": 0})
  (benchmarks / "quilt_yes").mkdir()
  (benchmarks / "quilt_yes" / "quilt_vqa.json").write_text(
    json.dumps([fixtures.QUILT_ROWS[1]])
  )
  only_yes_no = config_utils.with_updates(
    only_yes_no, {"datasets.quilt_vqa.path": str(benchmarks / "quilt_yes")}
  )
  with pytest.raises(InputError, match="all yes/no; set open_ended=False"):
    suite.run(tiny_run.config(), only_yes_no, ["ckpt"], "x")


def test_main_refuses_split(benchmarks):
  flag_values = _Flags(
    dict(checkpoint="c", compare=[], workdir="w", split="eval", num=1),
    present={"split"},
  )
  with pytest.raises(InputError, match="--split has no meaning with --suite"):
    suite.main(tiny_run.config(), paper_suite(benchmarks), flag_values)


class _Flags(types.SimpleNamespace):
  """absl-like flag values: attributes plus `flags["name"].present`."""

  def __init__(self, values, present=()):
    super().__init__(**values)
    self._present = set(present)

  def __getitem__(self, name):
    return types.SimpleNamespace(present=name in self._present)


# ------------------------------------------------------------ command line
def _stepjax(*args, timeout=600):
  env = xla_env.env(1, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "stepjax", *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=env,
    timeout=timeout,
  )


def test_cli_skips_a_missing_dataset_on_one_line(benchmarks, run_dir, tmp_path):
  out = tmp_path / "table"
  proc = _stepjax(
    "eval",
    f"--config={REPO}/configs/synthmed_tiny.py:test",
    "--config.mesh.data=1",
    "--config.data.num_eval=4",
    f"--suite={PAPER}:root={benchmarks},limit=1",
    f"--suite.datasets.mimic_vqa.path={tmp_path}/no/MIMIC-CXR-VQA",
    f"--checkpoint={run_dir}",
    f"--workdir={out}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if "MIMIC-VQA" in line]
  assert lines[0] == (
    f"suite: MIMIC-VQA (mimic_cxr_vqa): {tmp_path}/no/MIMIC-CXR-VQA does not "
    'exist; skipped (marked "missing" in the table)'
  )
  assert "Avg (7/8)" in proc.stdout
  table = json.loads((out / "suite.json").read_text())
  status = {d["name"]: d["status"] for d in table["datasets"]}
  assert status["mimic_vqa"] == "missing"
  assert [s for s in status.values()].count("ok") == 7
  row = table["checkpoints"][0]["per_dataset"]
  assert all(row[n]["num_records"] == 1 for n in status if n != "mimic_vqa")
  assert "| missing |" in (out / "suite.md").read_text()


def test_cli_bad_suite_file_is_one_error_line(tmp_path):
  bad = tmp_path / "bad_suite.py"
  bad.write_text("def get_config(arg=None):\n  raise RuntimeError('boom')\n")
  proc = _stepjax("eval", f"--suite={bad}", "--checkpoint=x", timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
    f"error: --suite={bad}: cannot load it (RuntimeError: boom)"
  ]
  proc = _stepjax(
    "eval", f"--suite={PAPER}", "--suite.datasets.slake.pth=x", timeout=120
  )
  assert proc.returncode == 2
  assert "--suite.datasets.slake.pth: unknown config key" in proc.stderr
  # --config problems are still named first.
  proc = _stepjax(
    "eval", f"--suite={PAPER}", "--config.rl.algoritm=x", timeout=120
  )
  assert proc.returncode == 2
  assert "--config.rl.algoritm: unknown config key" in proc.stderr
