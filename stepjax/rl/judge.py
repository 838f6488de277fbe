"""LLM step judge over any OpenAI-compatible chat-completions endpoint.

`JudgeClient(base_url, model, ...).judge(requests)` labels each step of each
completion valid (1) or invalid (0) with our prompt of the spec's criteria
(a step is valid when aligned with the gold rationale at its position in
the chain OR it directly contributes to the reference answer; meta
commentary, empty or repeated steps are invalid), and never raises for a
failed call: after `max_retries` retries (timeouts, connection errors, 408,
429, 5xx, replies that are not the JSON asked for) it applies the
configured fallback (invalid, valid or skip) and counts it in `stats`, by
cause (`process.FALLBACK_CAUSES`). `take_totals()` returns the counts since
its last call: the trainer calls it once per RL step for `metrics.jsonl`.
`ask(...)` is the same machinery (cache, retried call, counted fallback)
for any other question with a JSON reply: the answer judge
(`stepjax.eval.answer_judge`) asks it whether an answer matches its
reference. Token counts are added up when the server reports `usage`.

The prompt and the reply parsing live in `judge_prompt.py`.

HTTP is one pooled `httpx.Client` (connections reused across calls and
threads); retries are a `tenacity` loop with seeded, jittered exponential
backoff that honours Retry-After. The API key is read at call time from
the environment variable whose NAME is configured (`judge.api_key_env`);
it is kept in no attribute and sent per request (never set on the pooled
client), and log and error text is redacted of it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import email.utils
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import tenacity

from stepjax.errors import InputError
from stepjax.rl import judge_prompt, process
from stepjax.rl.judge_prompt import (  # noqa: F401 - the judge's public names
  SYSTEM_PROMPT,
  InvalidReply,
  build_messages,
  parse_reply,
  user_prompt,
)

log = logging.getLogger(__name__)

FALLBACKS = ("invalid", "valid", "skip")


class _Retryable(Exception):
  """A failed call worth retrying (timeout, connection, 408, 429, 5xx,
  invalid reply)."""

  def __init__(self, kind: str, detail: str, retry_after: float | None = None):
    super().__init__(f"{kind}: {detail}")
    self.kind = kind
    self.retry_after = retry_after


class _Fatal(Exception):
  """A failed call not worth retrying (400, 401, 403, 404, 3xx ...)."""

  def __init__(self, kind: str, detail: str):
    super().__init__(f"{kind}: {detail}")
    self.kind = kind


def cache_key(
  record_id: str, step_texts: Sequence[str], model: str = ""
) -> str:
  """The cache key of one completion's labels: its record, its steps and
  the judge model (two models sharing a cache file never share labels)."""
  blob = json.dumps(
    [str(record_id), list(step_texts), str(model)], ensure_ascii=False
  )
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def fallback_cause(kind: str) -> str:
  """The `process.FALLBACK_CAUSES` entry of an error kind ("timeout",
  "connection", "invalid_reply" or "http_<status>")."""
  if kind in ("timeout", "http_408"):
    return "timeout"
  if kind in ("connection", "invalid_reply"):
    return kind
  if kind == "http_429":
    return "rate_limited"
  if kind.startswith("http_5"):
    return "server_error"
  return "http_error"


def retry_after_s(value: str | None) -> float | None:
  """Seconds to wait from a Retry-After header: delta seconds or an HTTP
  date; None when absent or unreadable."""
  if not value:
    return None
  try:
    return max(0.0, float(value))
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError):
    return None
  if when.tzinfo is None:
    when = when.replace(tzinfo=datetime.UTC)
  now = datetime.datetime.now(datetime.UTC)
  return max(0.0, (when - now).total_seconds())


class JudgeClient:
  """Labels steps with an LLM behind a chat-completions endpoint.

  Args (the judge.* config keys):
    base_url: e.g. "https://api.openai.com/v1"; POSTs to
      {base_url}/chat/completions.
    model: the model name sent in the request.
    api_key_env: NAME of the environment variable holding the API key
      (unset: no Authorization header, for local servers).
    send_image: attach the record image as a data URL.
    timeout_s: limit for each network operation of a request (connect,
      send, each read); waiting for a free pooled connection is not
      limited (the pool holds `concurrency` connections).
    max_retries: retries after the first attempt.
    concurrency: parallel requests (thread pool and connection pool size).
    fallback: "invalid" (all steps 0), "valid" (all 1) or "skip" (no
      process reward for the completion) when every attempt failed.
    cache_path: JSONL file caching labels by (record id, step texts,
      judge model);
      "" keeps the cache in memory only.
    backoff_s, backoff_max_s: exponential backoff base and cap; each delay
      is scaled by a jitter in [0.5, 1.5) from a `seed`ed rng, and is at
      least the server's Retry-After (capped at backoff_max_s).
    extra_body: extra request fields (e.g. {"temperature": 0}).
    sleep: the sleep function (tests replace it).

  Call `close()` (or use it as a context manager) to release the pooled
  connections.
  """

  def __init__(
    self,
    base_url: str,
    model: str,
    *,
    api_key_env: str = "STEPJAX_JUDGE_API_KEY",
    send_image: bool = True,
    timeout_s: float = 60.0,
    max_retries: int = 3,
    concurrency: int = 8,
    fallback: str = "invalid",
    cache_path: str = "",
    backoff_s: float = 1.0,
    backoff_max_s: float = 30.0,
    seed: int = 0,
    extra_body: dict[str, Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
  ):
    if not base_url:
      raise InputError(
        "judge.base_url is empty; set it to an OpenAI-compatible endpoint "
        "(e.g. https://api.openai.com/v1) or use another rl.process_source"
      )
    if fallback not in FALLBACKS:
      raise InputError(
        f"judge.fallback={fallback!r}; choose one of {list(FALLBACKS)}"
      )
    self.url = base_url.rstrip("/") + "/chat/completions"
    self.model = model
    self.api_key_env = api_key_env
    self.send_image = send_image
    self.timeout_s = timeout_s
    self.max_retries = max_retries
    self.concurrency = max(1, concurrency)
    self.fallback = fallback
    self.cache_path = cache_path
    self.backoff_s = backoff_s
    self.backoff_max_s = backoff_max_s
    self.extra_body = dict(extra_body or {})
    self._sleep = sleep
    self._rng = random.Random(seed)
    self._lock = threading.Lock()
    self.stats: collections.Counter[str] = collections.Counter()
    self._taken: dict[str, int] = {}  # stats at the last take_totals()
    self._warned_causes: set[str] = set()  # since the last take_totals()
    self._cache: dict[str, tuple[int, ...]] = {}
    self._warned_no_key = False
    self._http = httpx.Client(
      timeout=httpx.Timeout(timeout_s, pool=None),
      limits=httpx.Limits(
        max_connections=self.concurrency,
        max_keepalive_connections=self.concurrency,
      ),
    )
    _quiet_request_logs()
    if cache_path and os.path.exists(cache_path):
      self._load_cache()

  @classmethod
  def from_config(cls, j: Any, **overrides: Any) -> JudgeClient:
    """The client the `judge.*` config group describes (`overrides` win)."""
    kwargs = dict(
      base_url=j.base_url,
      model=j.model,
      api_key_env=j.api_key_env,
      send_image=j.send_image,
      timeout_s=j.timeout_s,
      max_retries=j.max_retries,
      concurrency=j.concurrency,
      fallback=j.fallback,
      cache_path=j.cache_path,
    )
    kwargs.update(overrides)
    return cls(**kwargs)

  def __repr__(self) -> str:
    return (
      f"JudgeClient(url={self.url!r}, model={self.model!r}, "
      f"api_key_env={self.api_key_env!r}, fallback={self.fallback!r})"
    )

  def close(self) -> None:
    """Closes the pooled connections."""
    self._http.close()

  def __enter__(self) -> JudgeClient:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- cache ---------------------------------------------------------------

  def _load_cache(self):
    with open(self.cache_path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
          self._cache[row["key"]] = tuple(int(v) for v in row["labels"])
        except (ValueError, KeyError, TypeError):
          log.warning(
            "judge cache %s line %d is malformed; ignored", self.cache_path, n
          )

  def _store(self, key: str, record_id: str, labels: tuple[int, ...]):
    with self._lock:
      self._cache[key] = labels
      if self.cache_path:
        row = {"key": key, "record_id": str(record_id), "labels": labels}
        with open(self.cache_path, "a", encoding="utf-8") as f:
          f.write(json.dumps(row) + "\n")

  # -- HTTP ----------------------------------------------------------------

  def _redact(self, text: str) -> str:
    key = os.environ.get(self.api_key_env, "")
    return text.replace(key, "***") if key else text

  def _headers(self) -> dict[str, str]:
    """Per-request headers: the key is read now and never stored."""
    key = os.environ.get(self.api_key_env, "")
    if key:
      return {"Authorization": "Bearer " + key}
    with self._lock:
      first, self._warned_no_key = not self._warned_no_key, True
    if first:
      log.warning(
        "environment variable %s (judge.api_key_env) is not set; calling "
        "%s without an API key",
        self.api_key_env,
        self.url,
      )
    return {}

  def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
    """One POST; raises `_Retryable` or `_Fatal` (redacted) on failure."""
    try:
      resp = self._http.post(self.url, json=payload, headers=self._headers())
    except httpx.TimeoutException:
      raise _Retryable("timeout", f"no reply in {self.timeout_s}s") from None
    except httpx.TransportError as e:
      detail = self._redact(f"{type(e).__name__}: {e}")
      raise _Retryable("connection", detail) from None
    status = resp.status_code
    if not resp.is_success:
      detail = f"HTTP {status} {self._redact(resp.text[:300])}"
      if status in (408, 429) or status >= 500:
        wait = retry_after_s(resp.headers.get("Retry-After"))
        raise _Retryable(f"http_{status}", detail, wait)
      raise _Fatal(f"http_{status}", detail)
    try:
      return resp.json()
    except ValueError:
      raise _Retryable("invalid_reply", "body is not JSON") from None

  def _delay(self, attempt: int, retry_after: float | None) -> float:
    with self._lock:
      jitter = 0.5 + self._rng.random()
    delay = min(self.backoff_max_s, self.backoff_s * 2**attempt) * jitter
    if retry_after is not None:
      delay = max(delay, min(retry_after, self.backoff_max_s))
    return delay

  def _wait(self, state: tenacity.RetryCallState) -> float:
    """tenacity wait strategy: `_delay` of the attempt that just failed."""
    error = state.outcome.exception() if state.outcome else None
    retry_after = getattr(error, "retry_after", None)
    return self._delay(state.attempt_number - 1, retry_after)

  def _retrying(self) -> tenacity.Retrying:
    """Retries `_Retryable` failures; `_Fatal` ones and the last failure
    are re-raised as they are."""
    return tenacity.Retrying(
      stop=tenacity.stop_after_attempt(self.max_retries + 1),
      wait=self._wait,
      retry=tenacity.retry_if_exception_type(_Retryable),
      sleep=self._sleep,
      before_sleep=lambda state: self._count("retries"),
      reraise=True,
    )

  def _count(self, name: str, n: int = 1):
    with self._lock:
      self.stats[name] += n

  # -- judging -------------------------------------------------------------

  def _count_usage(self, body: dict[str, Any]):
    """Adds the reply's token counts (`usage`), when the server reports
    them, to `stats` (prompt_tokens, completion_tokens)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
      return
    for name in ("prompt_tokens", "completion_tokens"):
      value = usage.get(name)
      if isinstance(value, int) and not isinstance(value, bool):
        self._count(name, value)

  def _attempt(
    self,
    record_id: str,
    payload: dict,
    parse: Callable[[str], tuple[int, ...]],
    n: int,
  ):
    """One call and its parsed labels; counts it and its error."""
    self._count("calls")
    try:
      body = self._post(payload)
      self._count_usage(body)
      try:
        return parse(judge_prompt.reply_text(body))
      except InvalidReply as e:
        raise _Retryable("invalid_reply", self._redact(str(e))) from None
    except (_Retryable, _Fatal) as e:
      self._count(f"error_{e.kind}")
      log.debug("judge record %s attempt %d: %s", record_id, n, e)
      raise

  def _count_fallback(
    self,
    record_id: str,
    error: _Retryable | _Fatal,
    attempts: int,
    policy: str,
  ) -> None:
    """Counts a failure by cause; the first failure of each cause between
    two `take_totals` is a warning, the rest debug. `policy` names what the
    caller uses instead (logged)."""
    cause = fallback_cause(error.kind)
    with self._lock:
      for name in ("failures", "fallbacks", f"fallbacks_{cause}"):
        self.stats[name] += 1
      first = cause not in self._warned_causes
      self._warned_causes.add(cause)
    log.log(
      logging.WARNING if first else logging.DEBUG,
      "judge failed for record %s after %d attempt(s) (last: %s); using "
      "fallback %r%s",
      record_id,
      attempts,
      self._redact(str(error)),
      policy,
      f"; further {cause} failures until the next totals are debug logs"
      if first
      else "",
    )

  def ask(
    self,
    record_id: str,
    key: str,
    make_payload: Callable[[], dict[str, Any]],
    parse: Callable[[str], tuple[int, ...]],
    fallback: str,
  ) -> tuple[int, ...] | None:
    """One question through the cache, the retried call and the counted
    fallback: what the step judge does for a completion, for any question.

    Args:
      record_id: names the item in logs and the cache file.
      key: the cache key (a hash of everything the answer depends on).
      make_payload: builds the request body (called on a cache miss only).
      parse: the reply's message text -> labels; raises `InvalidReply` for
        a reply that is not what was asked (retried like a 5xx).
      fallback: what the caller uses when every attempt fails (logged).

    Returns:
      The labels (cached, or parsed and then cached), or None when every
      attempt failed; the failure is then counted in `stats` (failures,
      fallbacks, fallbacks_<cause>). Never raises for a failed call.
    """
    cached = self._cache.get(key)
    if cached is not None:
      self._count("cache_hits")
      return cached
    payload = make_payload()
    n = 0
    try:
      for attempt in self._retrying():
        with attempt:
          n = attempt.retry_state.attempt_number
          labels = self._attempt(record_id, payload, parse, n)
    except (_Retryable, _Fatal) as e:
      self._count_fallback(record_id, e, n, fallback)
      return None
    self._count("successes")
    self._store(key, record_id, labels)
    return labels

  def _fallback(self, req: process.StepRequest) -> process.StepLabels:
    """The configured fallback labels of a completion."""
    k = len(req.step_texts)
    value = 1 if self.fallback == "valid" else 0
    return process.StepLabels(
      (value,) * k,
      source="judge",
      fallback_used=True,
      skipped=self.fallback == "skip",
    )

  def _payload(self, req: process.StepRequest) -> dict[str, Any]:
    try:
      messages = build_messages(req, self.send_image)
    except OSError as e:
      log.warning(
        "record %s: cannot read image (%s); judging it without the image",
        req.record_id,
        e,
      )
      self._count("image_errors")
      messages = build_messages(req, send_image=False)
    return {"model": self.model, "messages": messages, **self.extra_body}

  def judge_one(self, req: process.StepRequest) -> process.StepLabels:
    """Labels one completion; never raises for a failed call."""
    self._count("requests")
    if not req.step_texts:
      return process.StepLabels((), source="judge")
    k = len(req.step_texts)
    labels = self.ask(
      req.record_id,
      cache_key(req.record_id, req.step_texts, self.model),
      lambda: self._payload(req),
      lambda text: parse_reply(text, k),
      self.fallback,
    )
    if labels is None:
      return self._fallback(req)
    return process.StepLabels(labels, source="judge")

  def judge(
    self, requests: Sequence[process.StepRequest]
  ) -> list[process.StepLabels]:
    """Labels many completions in parallel (`concurrency` threads)."""
    if not requests:
      return []
    workers = min(self.concurrency, len(requests))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      return list(pool.map(self.judge_one, requests))

  def label_steps(
    self, requests: Sequence[process.StepRequest]
  ) -> list[process.StepLabels]:
    """The process-source interface: same as `judge`."""
    return self.judge(requests)

  def take_totals(self) -> dict[str, int]:
    """Counts (`process.JUDGE_TOTALS`) since the last call, e.g. one RL
    step; warns once with the fallbacks by cause when there were any."""
    with self._lock:
      now = {k: self.stats[k] for k in process.JUDGE_TOTALS}
      totals = {k: now[k] - self._taken.get(k, 0) for k in now}
      self._taken = now
      self._warned_causes.clear()
    if totals["fallbacks"]:
      by_cause = ", ".join(
        f"{c}={totals[f'fallbacks_{c}']}"
        for c in process.FALLBACK_CAUSES
        if totals[f"fallbacks_{c}"]
      )
      log.warning(
        "judge: %d of %d completions fell back to %r since the last "
        "totals (%s)",
        totals["fallbacks"],
        totals["requests"],
        self.fallback,
        by_cause,
      )
    return totals


def _quiet_request_logs() -> None:
  """httpx logs every request at INFO; at a judge call per completion that
  floods the training log, so keep it to warnings unless a level is set."""
  logger = logging.getLogger("httpx")
  if logger.level == logging.NOTSET:
    logger.setLevel(logging.WARNING)
