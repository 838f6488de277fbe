"""`stepjax judge-check` against scripted step judges whose errors are
known: each flips a fixed share of the verifier's step labels, chosen by a
hash of the step, so the agreement it should report is known exactly."""

import collections
import hashlib
import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from stepjax import config_utils
from stepjax.eval import judge_agreement, judge_check
from stepjax.rl import failures as metrics

_HERE = pathlib.Path(__file__).parent
REPO = _HERE.parents[1]


def _load(name):
  spec = importlib.util.spec_from_file_location(name, _HERE / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


chat_server = _load("chat_server")
NUM = 150  # rationales: 658 steps, 195 of them invalid


def _config(**updates):
  return config_utils.with_updates(config_utils.default_config(), updates)


@pytest.fixture(scope="module")
def items():
  return judge_check.rationale_items(_config(), NUM)


@pytest.fixture(scope="module")
def truth_of(items):
  """What the scripted server knows: the verifier's labels of each
  (question, gold rationale, steps) it can be asked about."""
  table = {}
  for it in items:
    r = it.request
    key = (r.question, r.rationale, r.step_texts)
    assert table.setdefault(key, it.truth) == it.truth  # no ambiguity
  return table


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
  monkeypatch.setenv(chat_server.KEY_ENV, chat_server.SECRET)


def flipped(question, k, step, rate):
  """Whether the scripted judge flips step k: a hash of the step."""
  digest = hashlib.sha256(f"{question}|{k}|{step}".encode()).hexdigest()
  return int(digest[:8], 16) % 10_000 < rate * 10_000


def scripted_labels(question, steps, truth, judge):
  if judge == "all_valid":
    return [1] * len(steps)
  return [
    int(t) ^ int(flipped(question, k, s, judge))
    for k, (s, t) in enumerate(zip(steps, truth))
  ]


def _server(truth_of, judge, fail=None):
  def reply(body):
    text = chat_server.user_text(body)
    question = chat_server.field(text, "Question")
    rationale = chat_server.field(text, "Gold rationale")
    steps = tuple(chat_server.step_texts(text))
    if fail is not None and fail(steps):
      return fail(steps), "Steps 1 and 2 look fine."
    truth = truth_of[(question, rationale, steps)]
    labels = scripted_labels(question, steps, truth, judge)
    return "ok", json.dumps({"labels": labels})

  return chat_server.ChatServer(
    reply, usage={"prompt_tokens": 300, "completion_tokens": 12}
  )


def _judge_config(server, **updates):
  values = {
    "judge.base_url": server.url,
    "judge.model": "scripted-judge",
    "judge.api_key_env": chat_server.KEY_ENV,
    "judge.timeout_s": chat_server.PATIENT_TIMEOUT_S,
    "judge.max_retries": 0,
  }
  values.update(updates)
  return _config(**values)


def _expected(items, judge):
  """The scripted truth: agreement and the rest, computed here directly."""
  pairs = []  # (truth, judged, position) per step
  for it in items:
    q, steps = it.request.question, it.request.step_texts
    judged = scripted_labels(q, steps, it.truth, judge)
    for k, (t, j) in enumerate(zip(it.truth, judged)):
      pairs.append((t, j, metrics.ffp_bin(k, len(steps))))

  def scores(ps):
    n = collections.Counter((t, j) for t, j, _ in ps)
    tp, fp, fn = n[(0, 0)], n[(1, 0)], n[(0, 1)]
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    return {
      "steps": len(ps),
      "agreement": (n[(0, 0)] + n[(1, 1)]) / len(ps),
      "precision_invalid": precision,
      "recall_invalid": recall,
      "tp": tp,
      "fp": fp,
      "fn": fn,
    }

  out = scores(pairs)
  out["by_position"] = {
    b: scores([p for p in pairs if p[2] == b]) for b in metrics.BINS
  }
  return out


def _check_scores(got, want):
  assert got["steps"] == want["steps"]
  for key in ("agreement", "precision_invalid", "recall_invalid"):
    if want[key] is None:
      assert got[key] is None, key
    else:
      assert got[key] == pytest.approx(want[key], abs=1e-12), key
  c = got["confusion"]
  assert c["truth_invalid"]["judge_invalid"] == want["tp"]
  assert c["truth_valid"]["judge_invalid"] == want["fp"]
  assert c["truth_invalid"]["judge_valid"] == want["fn"]


@pytest.mark.parametrize("judge", [0.0, 0.1, 0.3, "all_valid"])
def test_agreement_matches_the_scripted_truth(judge, items, truth_of, tmp_path):
  server = _server(truth_of, judge)
  try:
    report = judge_check.run(
      _judge_config(server), str(tmp_path), num=NUM, checkpoint=""
    )
  finally:
    server.close()
  want = _expected(items, judge)
  got = report["all"]
  assert got["steps"] >= 500
  # Within 3 points of the scripted truth (in fact equal to it) ...
  assert abs(got["agreement"] - want["agreement"]) <= 0.03
  _check_scores(got, want)
  for b in metrics.BINS:
    _check_scores(got["by_position"][b], want["by_position"][b])
  # ... and of the flip rate the judge was scripted with.
  if judge == "all_valid":
    assert got["agreement"] == pytest.approx(1 - got["truth_invalid_share"])
    assert got["recall_invalid"] == 0.0
    assert got["precision_invalid"] is None and got["f1_invalid"] is None
    assert got["judged_invalid_share"] == 0.0
  else:
    assert abs(got["agreement"] - (1 - judge)) <= 0.03
    if judge == 0.0:
      assert got["f1_invalid"] == 1.0 and got["kappa"] == 1.0
  assert report["sets"]["rationales"]["agreement"] == got["agreement"]
  # Gold chains are all valid, cascades and corruptions hold invalid steps.
  kinds = report["sets"]["rationales"]["by_kind"]
  assert kinds["gold"]["truth_invalid_share"] == 0.0
  assert kinds["cascade"]["truth_invalid_share"] > 0.5
  assert 0 < kinds["corrupted"]["truth_invalid_share"] < 0.5
  # Cost: one call per rationale, the server's usage summed up.
  cost = report["cost"]
  assert cost["calls"] == NUM == server.calls["ok"]
  assert cost["fallbacks"] == 0 and cost["retries"] == 0
  assert cost["prompt_tokens"] == 300 * NUM
  assert cost["completion_tokens"] == 12 * NUM
  assert cost["tokens_reported"] and cost["seconds"] > 0
  # The files: JSON (the same report), markdown and the figure.
  assert json.loads((tmp_path / "report.json").read_text()) == report
  md = (tmp_path / "report.md").read_text()
  assert "scripted-judge" in md and "Confusion matrix" in md
  assert f"{100 * got['agreement']:.1f}" in md
  assert (tmp_path / "judge_check.png").stat().st_size > 10_000
  assert chat_server.SECRET not in md + json.dumps(report)


@pytest.mark.parametrize("fallback", ["invalid", "skip"])
def test_failed_calls_fall_back_and_are_counted(truth_of, tmp_path, fallback):
  num = 12
  few = judge_check.rationale_items(_config(), num)

  def fail(steps):
    h = hashlib.sha256("|".join(steps).encode()).digest()[0]
    return {0: "timeout", 1: "garbage", 2: "500"}.get(h % 4)

  expected = collections.Counter(fail(it.request.step_texts) for it in few)
  del expected[None]
  assert sum(expected.values()) >= 2
  server = _server(truth_of, 0.0, fail=fail)
  try:
    report = judge_check.run(
      _judge_config(
        server,
        **{
          "judge.fallback": fallback,
          "judge.timeout_s": chat_server.CLIENT_TIMEOUT_S,
        },
      ),
      str(tmp_path),
      num=num,
    )
  finally:
    server.close()
  s = report["sets"]["rationales"]
  failed = [it for it in few if fail(it.request.step_texts)]
  assert s["fallback_completions"] == len(failed)
  by_cause = report["cost"]["fallbacks_by_cause"]
  assert by_cause["timeout"] == expected["timeout"]
  assert by_cause["invalid_reply"] == expected["garbage"]
  assert by_cause["server_error"] == expected["500"]
  assert report["cost"]["fallbacks"] == len(failed)
  total_steps = sum(len(it.truth) for it in few)
  failed_steps = sum(len(it.truth) for it in failed)
  if fallback == "skip":
    # Left out of the agreement (the rest is judged perfectly), counted.
    assert s["skipped_steps"] == failed_steps
    assert s["steps"] == total_steps - failed_steps
    assert s["agreement"] == 1.0
  else:
    # Kept as "invalid" labels, as training would use them.
    assert s["steps"] == total_steps
    valid_lost = sum(sum(it.truth) for it in failed)
    assert s["agreement"] == pytest.approx(1 - valid_lost / total_steps)
  assert "Fallbacks by cause" in (tmp_path / "report.md").read_text()


def test_agreement_numbers_by_hand():
  truth = [[1, 0, 0], [1, 1], [0]]
  judged = [[1, 0, 1], [0, 1], [0]]
  a = judge_agreement.agreement(truth, judged)
  # steps: (1,1) (0,0) (0,1) (1,0) (1,1) (0,0): tp 2, fp 1, fn 1, tn 2
  assert a["steps"] == 6 and a["agreement"] == pytest.approx(4 / 6)
  assert a["precision_invalid"] == pytest.approx(2 / 3)
  assert a["recall_invalid"] == pytest.approx(2 / 3)
  assert a["f1_invalid"] == pytest.approx(2 / 3)
  assert a["kappa"] == pytest.approx((4 / 6 - 0.5) / 0.5)
  # positions: K=3 -> early, mid, late; K=2 -> early, late; K=1 -> early
  assert a["by_position"]["early"]["steps"] == 3
  assert a["by_position"]["mid"]["steps"] == 1
  assert a["by_position"]["late"]["steps"] == 2
  assert a["by_position"]["late"]["agreement"] == 0.5
  empty = judge_agreement.agreement([], [])
  assert empty["steps"] == 0 and empty["agreement"] is None
  with pytest.raises(ValueError, match="completion 0"):
    judge_agreement.agreement([[1, 0]], [[1]])


def test_simulated_noisy_judge_and_the_command(tmp_path):
  """`judge.simulate=verifier` with `rl.label_noise`: the trainer's own
  simulated fallible judge, measured; then the real command line."""
  report = judge_check.run(
    _config(**{"judge.simulate": "verifier", "rl.label_noise": 0.2}),
    str(tmp_path / "api"),
    num=NUM,
  )
  assert abs(report["all"]["agreement"] - 0.8) <= 0.05
  assert report["cost"]["calls"] == NUM
  assert not report["cost"]["tokens_reported"]
  out = tmp_path / "cli"
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "stepjax",
      "judge-check",
      "--config.judge.simulate=verifier",
      "--num=6",
      f"--workdir={out}",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr
  assert "agreement 100.0%" in done.stdout
  for name in ("report.json", "report.md", "judge_check.png"):
    assert (out / name).exists(), name
  bad = subprocess.run(
    [sys.executable, "-m", "stepjax", "judge-check", f"--workdir={out}"],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  assert bad.returncode == 2
  (line,) = bad.stderr.strip().splitlines()
  assert line.startswith("error: judge-check needs a step judge")
  assert "--config.judge.base_url" in line


tiny_run = _load("tiny_run")


def test_sampled_completions_of_a_checkpoint(tmp_path_factory):
  run_dir = tiny_run.run_dir(tmp_path_factory)
  config = tiny_run.config(**{"judge.simulate": "verifier"})
  out = tmp_path_factory.mktemp("judge_check_sampled")
  report = judge_check.run(config, str(out), num=4, checkpoint=run_dir)
  sampled = report["sets"]["sampled"]
  assert sampled["completions"] <= 4
  assert report["checkpoint"] == run_dir
  # The simulated judge is the verifier itself: full agreement wherever
  # the tiny policy wrote steps.
  if sampled["steps"]:
    assert sampled["agreement"] == 1.0
  assert report["sets"]["rationales"]["completions"] == 4
  assert "sampled" in (out / "report.md").read_text()


def test_sampled_completions_with_steps_are_judged(
  tmp_path_factory, monkeypatch
):
  """The sampled set with steps to judge. The tiny policy writes no steps,
  so its decoding is replaced by completions of known steps (gold chains,
  chains with one corrupted step, and one completion without steps),
  labelled by the verifier as `stepjax eval` labels them; a scripted
  server flips 10% of the labels."""
  from stepjax.data import synthmed
  from stepjax.eval import evaluate
  from stepjax.rl import process

  num = 9
  config = tiny_run.config()
  # What the server knows: the rationales' truth, then the sampled rows'.
  truth_of = {
    (it.request.question, it.request.rationale, it.request.step_texts): (
      it.truth
    )
    for it in judge_check.rationale_items(config, num)
  }
  sampled = []  # (row, record) of every completion written

  def fake_score(policy, task):
    del policy
    verify = synthmed.step_verifier(task.config.data.eval_verifier)
    rows = []
    for i in range(len(task.source)):
      record = task.source[i]
      scene = synthmed.scene_of(record)
      steps = synthmed.gold_steps(scene)
      if i % 3 == 1:
        made = judge_check._corrupt_one(steps, scene, np.random.default_rng(i))
        assert made is not None
        steps = made[0]
      if i == num - 1:
        steps = []  # nothing to judge: left out of the set
      labels = [int(v) for v in verify(steps, record.meta["scene"])]
      row = {
        "id": record.id,
        "question": record.question,
        "gold_answer": record.answer,
        "answer": record.answer,
        "correct": True,
        "steps": list(steps),
        "step_labels": labels if steps else [],
        "dataset": "synthmed",
        "completion": "",
      }
      key = (record.question, record.rationale, tuple(steps))
      assert truth_of.setdefault(key, tuple(labels)) == tuple(labels)
      rows.append(row)
      sampled.append((row, record))
    return rows, {}

  monkeypatch.setattr(evaluate, "score", fake_score)
  server = _server(truth_of, 0.1)
  out = tmp_path_factory.mktemp("judge_check_sampled_steps")
  try:
    report = judge_check.run(
      tiny_run.config(
        **{
          "judge.base_url": server.url,
          "judge.model": "scripted-judge",
          "judge.api_key_env": chat_server.KEY_ENV,
          "judge.timeout_s": chat_server.PATIENT_TIMEOUT_S,
          "judge.max_retries": 0,
        }
      ),
      str(out),
      num=num,
      checkpoint=tiny_run.run_dir(tmp_path_factory),
    )
  finally:
    server.close()
  assert len(sampled) == num
  items = [
    judge_check.Item(
      "sampled",
      "sampled",
      "sampled",
      process.StepRequest(
        record_id=row["id"],
        question=row["question"],
        reference=row["gold_answer"],
        step_texts=tuple(row["steps"]),
        rationale=record.rationale,
      ),
      tuple(row["step_labels"]),
    )
    for row, record in sampled
    if row["steps"]
  ]
  got = report["sets"]["sampled"]
  assert got["completions"] == len(items) == num - 1
  assert got["by_kind"]["sampled"]["completions"] == num - 1
  assert 0 < got["truth_invalid_share"] < 0.5  # the corrupted steps
  want = _expected(items, 0.1)
  _check_scores(got, want)
  for b in metrics.BINS:
    _check_scores(got["by_position"][b], want["by_position"][b])
  # One call per completion; each set has its own cost.
  assert got["cost"]["calls"] == num - 1
  assert report["sets"]["rationales"]["cost"]["calls"] == num
  assert report["cost"]["calls"] == server.calls["ok"] == 2 * num - 1
  assert report["all"]["steps"] == (
    got["steps"] + report["sets"]["rationales"]["steps"]
  )
  assert "sampled" in (out / "report.md").read_text()
