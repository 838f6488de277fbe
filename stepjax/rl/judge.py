"""LLM step judge over any OpenAI-compatible chat-completions endpoint.

`JudgeClient(base_url, model, ...).judge(requests)` labels each step of each
completion valid (1) or invalid (0) with our prompt of the spec's criteria
(a step is valid when aligned with the gold rationale at its position in
the chain OR it directly contributes to the reference answer; meta
commentary, empty or repeated steps are invalid), and never raises for a
failed call: after `max_retries` retries (timeouts, 429, 5xx, replies that
are not the JSON asked for) it applies the configured fallback (invalid,
valid or skip) and counts it in `stats`.

The API key is read at call time from the environment variable whose NAME
is configured (`judge.api_key_env`); it is kept in no attribute, and log and
error text is redacted of it. Standard library HTTP only (urllib).
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from stepjax.rl import process

log = logging.getLogger(__name__)

FALLBACKS = ("invalid", "valid", "skip")

SYSTEM_PROMPT = """\
You grade the reasoning of a medical visual question answering model, one \
step at a time, against a reference answer and a gold rationale written by \
an expert. Use the image when one is given.

A step is VALID (1) when at least one of these holds:
(a) it is aligned with the gold rationale for its position in the chain of \
reasoning: it names the right imaging modality, anatomy, finding, location \
and laterality (left/right), and moves in the right diagnostic direction \
for that stage;
(b) it contributes directly to deriving the reference answer.

A step is INVALID (0) when none of these holds, in particular when it:
- contradicts the image, the gold rationale or the reference answer (wrong \
modality, finding, location, side or direction, or a conclusion built on \
such an error earlier in the chain);
- is meta-commentary about the task, the format or the model itself \
("Let me think step by step.", "I will now look at the image.");
- is empty or only a number or punctuation;
- repeats an earlier step without adding anything.

Judge every step on its own merits; a correct step after a wrong one is \
still valid. Reply with one JSON object and nothing else:
{"labels": [l1, l2, ...]} with exactly one integer 0 or 1 per step, in \
step order."""


class InvalidReply(ValueError):
  """The judge's reply is not the JSON object asked for."""


class _Retryable(Exception):
  """A failed call worth retrying (timeout, 429, 5xx, invalid reply)."""

  def __init__(self, kind: str, detail: str, retry_after: float | None = None):
    super().__init__(f"{kind}: {detail}")
    self.kind = kind
    self.retry_after = retry_after


class _Fatal(Exception):
  """A failed call not worth retrying (400, 401, 403, 404 ...)."""

  def __init__(self, kind: str, detail: str):
    super().__init__(f"{kind}: {detail}")
    self.kind = kind


def _image_mime(data: bytes) -> str:
  if data.startswith(b"\xff\xd8"):
    return "image/jpeg"
  if data.startswith(b"GIF8"):
    return "image/gif"
  if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
    return "image/webp"
  return "image/png"


def user_prompt(req: process.StepRequest) -> str:
  """The text of the user message for one completion."""
  steps = "\n".join(
    f"Step {k}: {t}" for k, t in enumerate(req.step_texts, start=1)
  )
  k = len(req.step_texts)
  return (
    f"Question: {req.question}\n"
    f"Reference answer: {req.reference}\n"
    f"Gold rationale: {req.rationale or '(none given)'}\n\n"
    f"The model's reasoning has {k} steps:\n{steps}\n\n"
    f'Reply with {{"labels": [...]}} holding exactly {k} integers (0 or 1).'
  )


def build_messages(
  req: process.StepRequest, send_image: bool = True
) -> list[dict[str, Any]]:
  """Chat messages for one completion; the image as a base64 data URL."""
  content: list[dict[str, Any]] = []
  if send_image and req.image is not None:
    data = req.image
    if isinstance(data, str):
      with open(data, "rb") as f:
        data = f.read()
    url = f"data:{_image_mime(data)};base64,{base64.b64encode(data).decode()}"
    content.append({"type": "image_url", "image_url": {"url": url}})
  content.append({"type": "text", "text": user_prompt(req)})
  return [
    {"role": "system", "content": SYSTEM_PROMPT},
    {"role": "user", "content": content},
  ]


_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)\s*```", re.DOTALL)


def parse_reply(text: str, num_steps: int) -> tuple[int, ...]:
  """The labels in a reply `{"labels": [0/1 x num_steps]}`.

  The object may be inside a ``` code fence. Anything else (other keys
  missing, wrong count, values other than the integers 0 and 1) raises
  `InvalidReply`.
  """
  m = _FENCE.search(text)
  body = (m.group(1) if m else text).strip()
  try:
    obj = json.loads(body)
  except json.JSONDecodeError as e:
    raise InvalidReply(f"not JSON ({e.msg}): {body[:80]!r}") from None
  if not isinstance(obj, dict) or "labels" not in obj:
    raise InvalidReply(f'no "labels" key in {body[:80]!r}')
  labels = obj["labels"]
  if not isinstance(labels, list):
    raise InvalidReply(f'"labels" is not a list: {labels!r:.80}')
  if len(labels) != num_steps:
    raise InvalidReply(f"{len(labels)} labels for {num_steps} steps")
  for v in labels:
    if isinstance(v, bool) or not isinstance(v, int) or v not in (0, 1):
      raise InvalidReply(f"label {v!r:.20} is not 0 or 1")
  return tuple(labels)


def _reply_text(body: dict[str, Any]) -> str:
  try:
    content = body["choices"][0]["message"]["content"]
  except (KeyError, IndexError, TypeError):
    raise InvalidReply("no choices[0].message.content in the reply") from None
  if isinstance(content, list):  # content parts
    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
  if not isinstance(content, str):
    raise InvalidReply("message content is not text")
  return content


def cache_key(record_id: str, step_texts: Sequence[str]) -> str:
  blob = json.dumps([str(record_id), list(step_texts)], ensure_ascii=False)
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeClient:
  """Labels steps with an LLM behind a chat-completions endpoint.

  Args (the judge.* config keys):
    base_url: e.g. "https://api.openai.com/v1"; POSTs to
      {base_url}/chat/completions.
    model: the model name sent in the request.
    api_key_env: NAME of the environment variable holding the API key
      (unset: no Authorization header, for local servers).
    send_image: attach the record image as a data URL.
    timeout_s: socket timeout per HTTP request.
    max_retries: retries after the first attempt.
    concurrency: parallel requests (thread pool size).
    fallback: "invalid" (all steps 0), "valid" (all 1) or "skip" (no
      process reward for the completion) when every attempt failed.
    cache_path: JSONL file caching labels by (record id, step texts);
      "" keeps the cache in memory only.
    backoff_s, backoff_max_s: exponential backoff base and cap; each delay
      is scaled by a jitter in [0.5, 1.5) from a `seed`ed rng.
    extra_body: extra request fields (e.g. {"temperature": 0}).
    sleep: the sleep function (tests replace it).
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
      raise ValueError(
        "judge.base_url is empty; set it to an OpenAI-compatible endpoint "
        "(e.g. https://api.openai.com/v1) or use another rl.process_source"
      )
    if fallback not in FALLBACKS:
      raise ValueError(
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
    self._cache: dict[str, tuple[int, ...]] = {}
    self._warned_no_key = False
    if cache_path and os.path.exists(cache_path):
      self._load_cache()

  def __repr__(self) -> str:
    return (
      f"JudgeClient(url={self.url!r}, model={self.model!r}, "
      f"api_key_env={self.api_key_env!r}, fallback={self.fallback!r})"
    )

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

  def _store(self, req: process.StepRequest, labels: tuple[int, ...]):
    key = cache_key(req.record_id, req.step_texts)
    with self._lock:
      self._cache[key] = labels
      if self.cache_path:
        row = {"key": key, "record_id": str(req.record_id), "labels": labels}
        with open(self.cache_path, "a", encoding="utf-8") as f:
          f.write(json.dumps(row) + "\n")

  # -- HTTP ----------------------------------------------------------------

  def _redact(self, text: str) -> str:
    key = os.environ.get(self.api_key_env, "")
    return text.replace(key, "***") if key else text

  def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(self.api_key_env, "")
    if key:
      headers["Authorization"] = "Bearer " + key
    elif not self._warned_no_key:
      with self._lock:
        first, self._warned_no_key = not self._warned_no_key, True
      if first:
        log.warning(
          "environment variable %s (judge.api_key_env) is not set; calling "
          "%s without an API key",
          self.api_key_env,
          self.url,
        )
    request = urllib.request.Request(
      self.url, data=json.dumps(payload).encode(), headers=headers
    )
    try:
      with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
        raw = resp.read()
    except urllib.error.HTTPError as e:
      detail = e.read(300).decode("utf-8", "replace") if e.fp else ""
      detail = f"HTTP {e.code} {self._redact(detail)}"
      if e.code == 429 or e.code == 408 or e.code >= 500:
        retry_after = None
        try:
          retry_after = float(e.headers.get("Retry-After", ""))
        except (TypeError, ValueError):
          pass
        raise _Retryable(f"http_{e.code}", detail, retry_after) from None
      raise _Fatal(f"http_{e.code}", detail) from None
    except TimeoutError:
      raise _Retryable("timeout", f"no reply in {self.timeout_s}s") from None
    except urllib.error.URLError as e:
      reason = e.reason
      kind = "timeout" if isinstance(reason, TimeoutError) else "connection"
      raise _Retryable(kind, self._redact(str(reason))) from None
    except (ConnectionError, OSError) as e:
      raise _Retryable("connection", self._redact(str(e))) from None
    try:
      return json.loads(raw)
    except ValueError:
      raise _Retryable("invalid_reply", "body is not JSON") from None

  def _delay(self, attempt: int, retry_after: float | None) -> float:
    with self._lock:
      jitter = 0.5 + self._rng.random()
    delay = min(self.backoff_max_s, self.backoff_s * 2**attempt) * jitter
    if retry_after is not None:
      delay = max(delay, min(retry_after, self.backoff_max_s))
    return delay

  def _count(self, name: str, n: int = 1):
    with self._lock:
      self.stats[name] += n

  # -- judging -------------------------------------------------------------

  def _fallback(self, req: process.StepRequest) -> process.StepLabels:
    self._count("fallbacks")
    k = len(req.step_texts)
    value = 1 if self.fallback == "valid" else 0
    return process.StepLabels(
      (value,) * k,
      source="judge",
      fallback_used=True,
      skipped=self.fallback == "skip",
    )

  def judge_one(self, req: process.StepRequest) -> process.StepLabels:
    """Labels one completion; never raises for a failed call."""
    self._count("requests")
    if not req.step_texts:
      return process.StepLabels((), source="judge")
    cached = self._cache.get(cache_key(req.record_id, req.step_texts))
    if cached is not None:
      self._count("cache_hits")
      return process.StepLabels(cached, source="judge")
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
    payload = {"model": self.model, "messages": messages, **self.extra_body}
    last = ""
    for attempt in range(self.max_retries + 1):
      if attempt:
        self._count("retries")
      self._count("calls")
      try:
        body = self._post(payload)
        try:
          labels = parse_reply(_reply_text(body), len(req.step_texts))
        except InvalidReply as e:
          raise _Retryable("invalid_reply", str(e)) from None
      except _Retryable as e:
        self._count(f"error_{e.kind}")
        last = str(e)
        log.debug("judge record %s attempt %d: %s", req.record_id, attempt, e)
        if attempt < self.max_retries:
          self._sleep(self._delay(attempt, e.retry_after))
        continue
      except _Fatal as e:
        self._count(f"error_{e.kind}")
        last = str(e)
        break
      self._count("successes")
      self._store(req, labels)
      return process.StepLabels(labels, source="judge")
    self._count("failures")
    log.warning(
      "judge failed for record %s after %d attempt(s) (last: %s); using "
      "fallback %r",
      req.record_id,
      attempt + 1,
      self._redact(last),
      self.fallback,
    )
    return self._fallback(req)

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
