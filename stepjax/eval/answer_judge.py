"""LLM answer judge: does a generated answer match its reference?

The paper scores accuracy with an LLM ("is the generated answer the same
as, or a good enough answer for, the reference"), not by exact match, so
that "consolidation in the left lower lobe" matches "left lower lobe
consolidation". `eval.answer_judge=judge` asks the `judge.*` endpoint that
question for every evaluated answer; reports then carry both the exact and
the judged accuracy (`eval.report`).

The client is the step judge's (`stepjax.rl.judge.JudgeClient.ask`): the
same pooled HTTP client, retries with backoff, API-key handling and
redaction, cache (by judge model, question, reference and answer, so a
repeated answer costs no call and another judge model asks again) and
fallbacks counted by cause. When every attempt for an answer fails,
`eval.answer_judge_fallback` decides its verdict: mismatch (not
matching), exact (the exact-match verdict) or skip (no judged verdict;
left out of the judged accuracy).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from stepjax import config_checks
from stepjax.errors import InputError
from stepjax.rl import judge as judge_lib
from stepjax.rl import process

MODES = config_checks.ANSWER_JUDGE_MODES
FALLBACKS = config_checks.ANSWER_JUDGE_FALLBACKS

SYSTEM_PROMPT = """\
You grade the answers of a medical visual question answering model. Given \
a question, the reference answer written by an expert and the model's \
answer, decide whether the model's answer MATCHES the reference: it says \
the same thing as the reference (other wording, word order, synonyms, \
abbreviations or a more specific but still correct term), or it is a good \
enough answer to the question in the reference's sense. It does NOT match \
when it names another finding, location, side, organ, modality, number or \
diagnosis, contradicts the reference, hedges between several answers, or \
is empty.

Reply with one JSON object and nothing else: {"match": 1} when the answer \
matches the reference, {"match": 0} when it does not."""


def user_prompt(question: str, reference: str, answer: str) -> str:
  """The text of the user message for one answer."""
  return (
    f"Question: {question}\n"
    f"Reference answer: {reference}\n"
    f"Model answer: {answer if answer.strip() else '(empty)'}\n\n"
    'Reply with {"match": 1} or {"match": 0}.'
  )


def build_messages(
  question: str, reference: str, answer: str
) -> list[dict[str, Any]]:
  """Chat messages for one answer (text only: the verdict compares two
  answers to one question; the image is not needed)."""
  return [
    {"role": "system", "content": SYSTEM_PROMPT},
    {"role": "user", "content": user_prompt(question, reference, answer)},
  ]


_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)\s*```", re.DOTALL)


def parse_verdict(text: str) -> tuple[int]:
  """(1,) for `{"match": 1}` (or true), (0,) for 0 (or false).

  The object may be inside a ``` code fence; anything else raises
  `judge.InvalidReply` (retried, then a counted fallback).
  """
  m = _FENCE.search(text)
  body = (m.group(1) if m else text).strip()
  try:
    obj = json.loads(body)
  except json.JSONDecodeError as e:
    raise judge_lib.InvalidReply(f"not JSON ({e.msg}): {body[:80]!r}") from None
  if not isinstance(obj, dict) or "match" not in obj:
    raise judge_lib.InvalidReply(f'no "match" key in {body[:80]!r}')
  value = obj["match"]
  if value in (0, 1) and not isinstance(value, float):
    return (int(value),)
  raise judge_lib.InvalidReply(f'"match" is {value!r:.20}, not 0 or 1')


def cache_key(
  question: str, reference: str, answer: str, model: str = ""
) -> str:
  """The cache key of one verdict; "answer" keeps it apart from the step
  judge's keys when both share a cache file, and the judge's model keeps
  one judge's verdicts from answering for another's (comparing answer
  judges over one `judge.cache_path`)."""
  blob = json.dumps(
    ["answer", model, question, reference, answer], ensure_ascii=False
  )
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnswerJudge:
  """Verdicts on answers from a `judge.JudgeClient`.

  Args:
    client: the `JudgeClient` (its own counts: one per AnswerJudge).
    fallback: verdict when every call for an answer failed: "mismatch"
      (False), "exact" (the exact-match verdict) or "skip" (None).
  """

  def __init__(self, client: judge_lib.JudgeClient, fallback: str = "mismatch"):
    if fallback not in FALLBACKS:
      raise InputError(
        f"--config.eval.answer_judge_fallback={fallback!r}: expected one of "
        f"{list(FALLBACKS)}"
      )
    self.client = client
    self.fallback = fallback
    self.requests = 0

  @classmethod
  def from_config(cls, config: Any) -> AnswerJudge:
    """The answer judge of `config.judge` and `config.eval`."""
    e = config.eval
    if not (config.judge.base_url and config.judge.model):
      raise InputError(
        "--config.eval.answer_judge=judge needs --config.judge.base_url and "
        "--config.judge.model (an OpenAI-compatible chat-completions "
        "endpoint)"
      )
    client = judge_lib.JudgeClient.from_config(config.judge, send_image=False)
    return cls(client, e.answer_judge_fallback)

  def close(self) -> None:
    self.client.close()

  def __enter__(self) -> AnswerJudge:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def verdict(
    self,
    question: str,
    reference: str,
    answer: str,
    exact: bool = False,
    record_id: str = "",
  ) -> bool | None:
    """Whether `answer` matches `reference`; never raises for a failed
    call (the fallback verdict: False, `exact`, or None for skip)."""
    labels = self.client.ask(
      record_id or question[:40],
      cache_key(question, reference, answer, self.client.model),
      lambda: {
        "model": self.client.model,
        "messages": build_messages(question, reference, answer),
        **self.client.extra_body,
      },
      parse_verdict,
      self.fallback,
    )
    if labels is not None:
      return bool(labels[0])
    if self.fallback == "exact":
      return bool(exact)
    return None if self.fallback == "skip" else False

  def judge_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[bool | None]:
    """Verdicts of eval rows (question, gold_answer, answer, correct, id),
    `client.concurrency` at a time."""
    self.requests += len(rows)
    if not rows:
      return []

    def one(row):
      return self.verdict(
        str(row["question"]),
        str(row["gold_answer"]),
        str(row["answer"]),
        exact=bool(row.get("correct", False)),
        record_id=str(row.get("id", "")),
      )

    workers = min(self.client.concurrency, len(rows))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      return list(pool.map(one, rows))

  def summary(self) -> dict[str, Any]:
    """What the report keeps of this judge: who judged, the fallback
    policy and the counts (answers asked, HTTP calls incl. retries, cache
    hits, retries, fallbacks, by cause, tokens when reported)."""
    st = self.client.stats
    return {
      "mode": "judge",
      "model": self.client.model,
      "url": self.client.url,
      "fallback": self.fallback,
      "requests": self.requests,
      "calls": st["calls"],
      "cache_hits": st["cache_hits"],
      "retries": st["retries"],
      "fallbacks": st["fallbacks"],
      "fallbacks_by_cause": {
        c: st[f"fallbacks_{c}"] for c in process.FALLBACK_CAUSES
      },
      "prompt_tokens": st["prompt_tokens"],
      "completion_tokens": st["completion_tokens"],
    }


def mode(config: Any) -> str:
  """`eval.answer_judge`; "exact" for a config without an eval group (a
  run's config.json written before the group existed)."""
  e = config.get("eval")
  return "exact" if e is None else str(e.answer_judge)


def judge_rows(config: Any, rows: list[dict[str, Any]]) -> dict | None:
  """With `eval.answer_judge=judge`: asks the judge about every row, sets
  each row's "judged_correct" (bool, or None when skipped) and returns the
  judge's summary for the report; with "exact": None, rows untouched."""
  name = mode(config)
  if name == "exact":
    return None
  if name not in MODES:
    raise InputError(
      f"--config.eval.answer_judge={name!r}: expected one of {list(MODES)}"
    )
  with AnswerJudge.from_config(config) as judge:
    verdicts = judge.judge_rows(rows)
    for row, v in zip(rows, verdicts):
      row["judged_correct"] = v
    return judge.summary()
