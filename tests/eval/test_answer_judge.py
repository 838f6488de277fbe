"""The LLM answer judge against a scripted local chat-completions server:
judged accuracy equals the server's verdicts, failed calls fall back and
are counted, the cache answers repeats, reports carry both accuracies."""

import importlib.util
import json
import pathlib

import pytest

from stepjax import config_checks, config_utils
from stepjax.eval import answer_judge, evaluate
from stepjax.eval import report as report_lib
from stepjax.rl import judge as judge_lib

_HERE = pathlib.Path(__file__).parent


def _load(name):
  spec = importlib.util.spec_from_file_location(name, _HERE / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


chat_server = _load("chat_server")

# The scripted judge: (reference, answer) -> verdict. Answers "timeout",
# "garbage" and "500" make the server fail in that way instead.
VERDICTS = {
  ("left lower lobe consolidation", "consolidation in the left lower lobe"): 1,
  ("left lower lobe consolidation", "right lower lobe consolidation"): 0,
  ("ct", "computed tomography"): 1,
  ("ct", "ct"): 1,
  ("2", "two"): 1,
  ("2", "3"): 0,
  ("pneumothorax", "no pneumothorax"): 0,
}


def _reply(body):
  text = chat_server.user_text(body)
  answer = chat_server.field(text, "Model answer")
  if answer in ("timeout", "garbage", "500"):
    return answer, "The answer looks right to me."
  reference = chat_server.field(text, "Reference answer")
  return "ok", json.dumps({"match": VERDICTS[(reference, answer)]})


@pytest.fixture
def server():
  s = chat_server.ChatServer(
    _reply, usage={"prompt_tokens": 50, "completion_tokens": 4}
  )
  yield s
  s.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
  monkeypatch.setenv(chat_server.KEY_ENV, chat_server.SECRET)


def _config(server, **updates):
  values = {
    "eval.answer_judge": "judge",
    "judge.base_url": server.url,
    "judge.model": "answer-judge",
    "judge.api_key_env": chat_server.KEY_ENV,
    "judge.timeout_s": chat_server.CLIENT_TIMEOUT_S,
    "judge.max_retries": 1,
  }
  values.update(updates)
  return config_utils.with_updates(config_utils.default_config(), values)


def _row(i, reference, answer):
  exact = answer_judge_exact(answer, reference)
  return {
    "id": f"r{i}",
    "question": "What is the finding?",
    "gold_answer": reference,
    "answer": answer,
    "correct": exact,
    "steps": ["A step."],
    "step_labels": [1],
    "dataset": "vqa_rad",
  }


def answer_judge_exact(answer, reference):
  from stepjax.rl import rewards

  return bool(rewards.answers_match(answer, reference))


def _fast_judge(config, server):
  """The configured judge with instant backoff (tests only)."""
  judge = answer_judge.AnswerJudge.from_config(config)
  judge.client.backoff_s = judge.client.backoff_max_s = 0.0
  server.clients.append(judge)
  return judge


def test_parse_verdict():
  assert answer_judge.parse_verdict('{"match": 1}') == (1,)
  assert answer_judge.parse_verdict('{"match": 0}') == (0,)
  assert answer_judge.parse_verdict('{"match": true}') == (1,)
  assert answer_judge.parse_verdict('ok\n```json\n{"match": 0}\n```') == (0,)
  for bad in ('{"match": 2}', '{"match": 1.0}', '{"verdict": 1}', "yes", "[1]"):
    with pytest.raises(judge_lib.InvalidReply):
      answer_judge.parse_verdict(bad)


def test_prompt_has_question_reference_and_answer():
  msgs = answer_judge.build_messages("Which lobe?", "left lower", "")
  assert "matches" in msgs[0]["content"].lower()
  user = msgs[1]["content"]
  assert "Question: Which lobe?" in user
  assert "Reference answer: left lower" in user
  assert "Model answer: (empty)" in user


def test_judged_accuracy_equals_the_servers_verdicts(server):
  pairs = list(VERDICTS)
  rows = [_row(i, ref, ans) for i, (ref, ans) in enumerate(pairs)]
  summary = answer_judge.judge_rows(_config(server), rows)
  assert [r["judged_correct"] for r in rows] == [
    bool(VERDICTS[p]) for p in pairs
  ]
  report = report_lib.build_report(
    [report_lib.record_fields(r) for r in rows], answer_judge=summary
  )
  assert report["accuracy_judged"] == pytest.approx(
    sum(VERDICTS.values()) / len(VERDICTS)
  )
  assert report["num_judged"] == len(rows)
  # Exact match is kept alongside: "ct" and "two" (for 2) match exactly.
  assert report["accuracy"] == pytest.approx(2 / len(rows))
  assert (
    report["per_dataset"]["vqa_rad"]["accuracy_judged"]
    == (report["accuracy_judged"])
  )
  aj = report["answer_judge"]
  assert aj["mode"] == "judge" and aj["model"] == "answer-judge"
  assert aj["requests"] == aj["calls"] == len(rows) == server.calls["ok"]
  assert aj["fallbacks"] == aj["retries"] == aj["cache_hits"] == 0
  assert aj["prompt_tokens"] == 50 * len(rows)
  assert aj["completion_tokens"] == 4 * len(rows)
  # The key reached the server and nothing the report holds.
  assert set(server.auth) == {"Bearer " + chat_server.SECRET}
  assert chat_server.SECRET not in json.dumps(report)
  # Both accuracies side by side, and in the printed summary.
  table = report_lib.compare({"run": report})
  assert "Acc judged %" in table
  line = evaluate.summary_line(report)
  assert "accuracy_judged=0.571" in line and "calls=7" in line


@pytest.mark.parametrize(
  "policy, judged", [("mismatch", 0), ("exact", 1), ("skip", None)]
)
def test_timeouts_and_garbage_fall_back_and_are_counted(server, policy, judged):
  config = _config(server, **{"eval.answer_judge_fallback": policy})
  judge = _fast_judge(config, server)
  # "ct" answered "ct": exact match is right, the judge fails on it.
  rows = [
    _row(0, "ct", "ct"),
    {**_row(1, "ct", "timeout"), "correct": True},
    {**_row(2, "ct", "garbage"), "correct": True},
    {**_row(3, "ct", "500"), "correct": True},
  ]
  verdicts = judge.judge_rows(rows)
  expected = None if judged is None else bool(judged)
  assert verdicts == [True, expected, expected, expected]
  s = judge.summary()
  assert s["fallback"] == policy
  assert s["requests"] == 4
  assert s["fallbacks"] == 3
  assert s["fallbacks_by_cause"] == {
    "timeout": 1,
    "connection": 0,
    "rate_limited": 0,
    "server_error": 1,
    "invalid_reply": 1,
    "http_error": 0,
  }
  assert s["retries"] == 3  # one retry for each failing answer
  assert s["calls"] == 1 + 3 * 2
  assert server.calls["garbage"] == server.calls["500"] == 2
  for row, v in zip(rows, verdicts):
    row["judged_correct"] = v
  report = report_lib.build_report(
    [report_lib.record_fields(r) for r in rows], answer_judge=s
  )
  if judged is None:  # skipped: only the one verdict counts
    assert report["num_judged"] == 1 and report["accuracy_judged"] == 1.0
  else:
    assert report["accuracy_judged"] == (1 + 3 * judged) / 4


def test_cache_answers_repeats_without_a_call(server, tmp_path):
  cache = tmp_path / "judge_cache.jsonl"
  config = _config(server, **{"judge.cache_path": str(cache)})
  rows = [_row(0, "2", "two"), _row(1, "2", "two"), _row(2, "2", "3")]
  judge = _fast_judge(config, server)
  # One at a time, so the repeat comes after the first verdict is stored.
  assert [judge.judge_rows([r])[0] for r in rows] == [True, True, False]
  assert server.calls["ok"] == 2
  assert judge.summary()["cache_hits"] == 1
  # A new judge (a new process) reads the cache file: no call at all.
  again = _fast_judge(config, server)
  assert again.judge_rows(rows) == [True, True, False]
  assert server.calls["ok"] == 2
  assert again.summary()["cache_hits"] == 3
  assert again.summary()["calls"] == 0
  # Failed calls are not cached: a timeout is asked again next time.
  again.judge_rows([_row(3, "2", "timeout")])
  assert len(cache.read_text().splitlines()) == 2
  assert chat_server.SECRET not in cache.read_text()
  # Another judge model over the same cache file asks for itself.
  other = _fast_judge(
    config_utils.with_updates(config, {"judge.model": "other-judge"}), server
  )
  assert [other.judge_rows([r])[0] for r in rows] == [True, True, False]
  assert other.summary()["calls"] == 2 and other.summary()["cache_hits"] == 1
  assert server.calls["ok"] == 4


def test_exact_mode_leaves_rows_and_report_as_they_were():
  config = config_utils.default_config()
  rows = [_row(0, "ct", "ct")]
  assert answer_judge.judge_rows(config, rows) is None
  assert "judged_correct" not in rows[0]
  report = report_lib.build_report([report_lib.record_fields(r) for r in rows])
  assert report["answer_judge"] == {"mode": "exact"}
  assert report["accuracy_judged"] is None
  assert "Acc judged" not in report_lib.compare({"run": report})
  # A run's config.json from before the eval group: exact match.
  old = config_utils.default_config()
  with old.unlocked():
    del old["eval"]
  assert answer_judge.mode(old) == "exact"
  config_checks.check(old, training=False)


@pytest.mark.parametrize(
  "updates, flag",
  [
    ({"eval.answer_judge": "llm"}, "eval.answer_judge"),
    ({"eval.answer_judge_fallback": "valid"}, "eval.answer_judge_fallback"),
    ({"eval.answer_judge": "judge"}, "judge.base_url"),
  ],
)
def test_config_errors_name_the_flag(updates, flag):
  config = config_utils.with_updates(config_utils.default_config(), updates)
  with pytest.raises(config_checks.ConfigError, match=f"--config.{flag}"):
    config_checks.check(config, training=False)


def test_bad_record_verdict_type():
  row = {**_row(0, "ct", "ct"), "judged_correct": "yes"}
  with pytest.raises(ValueError, match="judged_correct"):
    report_lib.build_report([report_lib.record_fields(row)])


# ------------------------------------------------- `stepjax eval`, end to end


tiny_run = _load("tiny_run")


def _parity_reply(body):
  """Matches when the model's answer has an even number of characters."""
  answer = chat_server.field(chat_server.user_text(body), "Model answer")
  answer = "" if answer == "(empty)" else answer
  return "ok", json.dumps({"match": int(len(answer) % 2 == 0)})


def test_stepjax_eval_reports_exact_and_judged_accuracy(tmp_path_factory):
  from stepjax.eval import run as eval_run

  run_dir = tiny_run.run_dir(tmp_path_factory)
  server = chat_server.ChatServer(_parity_reply)
  try:
    config = tiny_run.config(
      **{
        "eval.answer_judge": "judge",
        "judge.base_url": server.url,
        "judge.model": "answer-judge",
        "judge.api_key_env": chat_server.KEY_ENV,
      }
    )
    out = tmp_path_factory.mktemp("judged_eval")
    report = eval_run.run(config, run_dir, str(out))
  finally:
    server.close()
  rows = report_lib.load_records(str(out))
  assert len(rows) == 4
  for r in rows:
    assert r["judged_correct"] == (len(r["answer"]) % 2 == 0)
  assert report["accuracy_judged"] == pytest.approx(
    sum(r["judged_correct"] for r in rows) / 4
  )
  assert report["accuracy"] == pytest.approx(
    sum(r["correct"] for r in rows) / 4
  )
  saved = report_lib.load_report(str(out))
  assert (
    saved["answer_judge"]["calls"] + saved["answer_judge"]["cache_hits"] == 4
  )
  assert saved["answer_judge"]["calls"] == server.calls["ok"]
