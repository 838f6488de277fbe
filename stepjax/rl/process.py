"""Process-reward sources: who says which steps of a completion are valid.

One interface, `label_steps(requests) -> list[StepLabels]`, four sources
(`rl.process_source`):
  verifier    a rule verifier over the record's scene (SynthMed), given as
              a callable `verify_steps(step_texts, scene_dict) -> [bool]`;
  judge       an LLM judge (`stepjax.rl.judge.JudgeClient`, or anything
              with `judge(requests) -> list[StepLabels]`);
  value_head  the policy's step-value logits: valid when sigmoid >= thr;
  hybrid      the judge for a fraction of completions (seeded random ones,
              or those whose head labels are least certain:
              `rl.hybrid_select`), the value head for the rest (and where
              the judge fell back).
`judge_totals` collects the judge's per-step counts (calls, cache hits,
retries, fallbacks by cause) from whichever source in a chain counts them.
`pack_labels` turns the labels into the fixed-shape arrays the advantage
shaping takes, `token_labels` into the per-token labels the value loss
takes. Shapes: B completions, T tokens, K steps of a completion (its true
count), K_pad step slots of a batch (at least its largest K).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from stepjax.errors import InputError

# Why a judge call fell back: a timeout (incl. HTTP 408), a connection
# error, HTTP 429, HTTP 5xx, another HTTP status (not retried: 4xx, 3xx) or
# a reply that is not the JSON asked for.
FALLBACK_CAUSES = (
  "timeout",
  "connection",
  "rate_limited",
  "server_error",
  "http_error",
  "invalid_reply",
)
# Judge counts reported per RL step (`take_totals` of a judge source):
# completions asked, HTTP calls (retries included), cache hits, retries,
# fallbacks (all, then by cause).
JUDGE_TOTALS = (
  "requests",
  "calls",
  "cache_hits",
  "retries",
  "fallbacks",
  *(f"fallbacks_{c}" for c in FALLBACK_CAUSES),
)


@dataclasses.dataclass(frozen=True)
class StepRequest:
  """One completion's steps and the record they answer.

  image: encoded image bytes, a local path or the record's
    `data.records.ImageRef` (None: no image).
  meta: the record's meta (SynthMed puts its scene under "scene").
  value_logits: float[K] step-value logits, for the value-head source.
  """

  record_id: str
  question: str
  reference: str
  step_texts: tuple[str, ...]
  rationale: str = ""
  image: Any = None
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  value_logits: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class StepLabels:
  """Labels for one completion's K steps.

  labels: K ints, 1 = valid; meaningless when `skipped`.
  confidence: K probabilities that the step is valid, when known.
  source: "verifier" | "judge" | "value_head".
  fallback_used: the judge failed and the configured fallback was applied.
  skipped: no process reward for this completion (judge fallback "skip").
  """

  labels: tuple[int, ...]
  confidence: tuple[float, ...] | None = None
  source: str = ""
  fallback_used: bool = False
  skipped: bool = False


class ProcessSource(Protocol):
  def label_steps(
    self, requests: Sequence[StepRequest]
  ) -> list[StepLabels]: ...


class VerifierSource:
  """Rule-verified labels from the record's scene (SynthMed)."""

  def __init__(
    self,
    verify_steps: Callable[[Sequence[str], Mapping[str, Any]], Sequence[bool]],
    scene_key: str = "scene",
  ):
    self._verify = verify_steps
    self._scene_key = scene_key

  def label_steps(self, requests: Sequence[StepRequest]) -> list[StepLabels]:
    out = []
    for req in requests:
      if self._scene_key not in req.meta:
        raise ValueError(
          f"record {req.record_id}: meta has no {self._scene_key!r}; the "
          "verifier process source needs SynthMed records (set "
          "rl.process_source to judge or value_head for other data)"
        )
      ok = list(self._verify(list(req.step_texts), req.meta[self._scene_key]))
      if len(ok) != len(req.step_texts):
        raise ValueError(
          f"record {req.record_id}: the verifier returned {len(ok)} labels "
          f"for {len(req.step_texts)} steps; it must return one per step"
        )
      out.append(StepLabels(tuple(int(bool(v)) for v in ok), source="verifier"))
    return out


class JudgeSource:
  """Labels from an LLM judge client (`judge(requests)`)."""

  def __init__(self, client: Any):
    self.client = client

  def label_steps(self, requests: Sequence[StepRequest]) -> list[StepLabels]:
    return list(self.client.judge(list(requests)))


def step_logits(req: StepRequest, needed_by: str) -> np.ndarray:
  """float64[K]: the step-value logits of `req`'s K steps; a ValueError
  naming the record and `needed_by` when the request carries fewer."""
  k = len(req.step_texts)
  if req.value_logits is None or len(req.value_logits) < k:
    raise ValueError(
      f"record {req.record_id}: {needed_by} needs the step-value logits "
      f"(value_logits) of its {k} steps; the model must have a step-value "
      "head (model.step_value_hidden > 0)"
    )
  return np.asarray(req.value_logits, np.float64)[:k]


class ValueHeadSource:
  """Labels from step-value logits: valid when sigmoid(logit) >= threshold."""

  def __init__(self, threshold: float = 0.5):
    self.threshold = threshold

  def label_steps(self, requests: Sequence[StepRequest]) -> list[StepLabels]:
    out = []
    for req in requests:
      logits = step_logits(req, "the value_head source")
      prob = 1.0 / (1.0 + np.exp(-logits))
      out.append(
        StepLabels(
          tuple(int(p >= self.threshold) for p in prob),
          confidence=tuple(float(p) for p in prob),
          source="value_head",
        )
      )
    return out


# How a hybrid source picks the completions it sends to the judge
# (`rl.hybrid_select`): seeded random ones, or the ones the value head is
# least sure of (`completion_uncertainty`, ties in the seeded random order).
HYBRID_SELECTIONS = ("random", "uncertain")


def completion_uncertainty(requests: Sequence[StepRequest]) -> np.ndarray:
  """float64[B]: the value head's own probability that at least one of a
  completion's K step labels is wrong, 1 - prod_k max(p_k, 1 - p_k), with
  p_k = sigmoid(logit_k); 0 for a completion without steps.

  Summed in log space: log max(p, 1 - p) = -softplus(-|logit|), so a long
  chain of confident steps does not round to 0 or 1."""
  out = np.zeros(len(requests), np.float64)
  for i, req in enumerate(requests):
    if not req.step_texts:
      continue
    x = np.abs(step_logits(req, "rl.hybrid_select=uncertain"))
    log_sure = -np.sum(np.logaddexp(0.0, -x))
    out[i] = -np.expm1(log_sure)
  return out


def label_error_rates(
  given: Sequence[StepLabels],
  truth: Sequence[StepLabels],
  used_BxK: np.ndarray | None = None,
) -> dict[str, float]:
  """How wrong the process labels a batch was trained on are, against the
  true labels of the same completions (skipped completions left out):
  `label_false_invalid_share` the share of truly valid steps labelled
  invalid, `label_false_valid_share` the share of truly invalid steps
  labelled valid (NaN where a batch has no such step).

  With `used_BxK` ({0,1}[B, K_pad], `shaping_mask`), also the same two
  shares over the labels that reshaped their steps only
  (`label_used_false_invalid_share`, `label_used_false_valid_share`) and
  `label_abstained_share`, the share of labelled steps that did not; and
  the two shares over the head's labels that reshaped their steps
  (`label_head_used_false_*`: labels with a confidence, i.e. not a judge's
  or verifier's, which are right by construction on SynthMed). The used
  and head-used shares come with their denominators, the counts of truly
  valid and invalid steps (`label_used_valid_steps`, ...,
  `label_head_used_invalid_steps`); `label_head_valid_steps` and
  `label_head_invalid_steps` count the truly valid / invalid steps of
  every completion the head labelled, shaped or not (so the share of the
  truly invalid steps the head was sure of is `label_head_used_invalid_
  steps / label_head_invalid_steps`)."""
  if len(given) != len(truth):
    raise ValueError(f"{len(given)} label sets against {len(truth)} truths")
  kept = [
    i
    for i, (g, t) in enumerate(zip(given, truth))
    if not g.skipped and len(t.labels)
  ]
  g_S = _steps([np.asarray(given[i].labels, np.int64) for i in kept])
  t_S = _steps([np.asarray(truth[i].labels, np.int64) for i in kept])
  if g_S.shape != t_S.shape:
    raise ValueError("a label set and its truth differ in step count")
  out = _error_shares(g_S, t_S, "label")
  if used_BxK is not None:
    used_S = _steps(
      [np.asarray(used_BxK[i, : len(truth[i].labels)]) > 0 for i in kept]
    ).astype(bool)
    out.update(_error_shares(g_S[used_S], t_S[used_S], "label_used"))
    out.update(_truth_counts(t_S[used_S], "label_used"))
    out["label_abstained_share"] = (
      float(np.mean(~used_S)) if used_S.size else float("nan")
    )
    head_S = _steps(
      [
        np.full(len(truth[i].labels), given[i].confidence is not None)
        for i in kept
      ]
    ).astype(bool)
    head_used_S = used_S & head_S
    out.update(
      _error_shares(g_S[head_used_S], t_S[head_used_S], "label_head_used")
    )
    out.update(_truth_counts(t_S[head_used_S], "label_head_used"))
    out.update(_truth_counts(t_S[head_S], "label_head"))
  return out


def _truth_counts(truth_S: np.ndarray, prefix: str) -> dict[str, float]:
  """{prefix}_valid_steps and {prefix}_invalid_steps: how many of S steps
  are truly valid / invalid, the denominators of the two error shares (so
  shares can be pooled over steps: sum(share * count) / sum(count))."""
  return {
    f"{prefix}_valid_steps": float(np.sum(truth_S == 1)),
    f"{prefix}_invalid_steps": float(np.sum(truth_S == 0)),
  }


def _steps(per_completion: Sequence[np.ndarray]) -> np.ndarray:
  """The completions' per-step values, concatenated."""
  return np.concatenate(per_completion) if per_completion else np.zeros(0)


def _error_shares(
  given_S: np.ndarray, truth_S: np.ndarray, prefix: str
) -> dict[str, float]:
  """{prefix}_false_invalid_share and {prefix}_false_valid_share of S
  steps' labels against their truth (NaN where no step is such)."""
  valid, invalid = truth_S == 1, truth_S == 0
  nan = float("nan")
  return {
    f"{prefix}_false_invalid_share": (
      float(np.mean(given_S[valid] == 0)) if valid.any() else nan
    ),
    f"{prefix}_false_valid_share": (
      float(np.mean(given_S[invalid] == 1)) if invalid.any() else nan
    ),
  }


def max_full_judge_calls(judge_fraction: float, total_calls: int) -> int:
  """The most RL steps a hybrid run can judge whole (every completion)
  within its budget of `judge_fraction` of `total_calls` steps' worth."""
  return math.floor(judge_fraction * total_calls + 1e-9)


class HybridSource:
  """The judge for a fraction of completions, the value head for the rest.

  Which completions go to the judge: with `select="random"` a draw of
  `np.random.default_rng` from (seed, call number), so reruns choose the
  same ones; with `select="uncertain"` the ones whose head labels are
  least certain (`completion_uncertainty`: longer chains weigh more, as
  they hold more labels that can be wrong), ties in that draw's order. A
  completion whose judge call fell back gets the value head's labels
  instead.
  After each call `last_judged` holds the indices the judge labelled (not
  fallen back): the trainer trains the value head on those.

  With `full_judge_calls` W > 0 the judge budget is front-loaded: calls
  `first_call` .. `first_call + W - 1` (the first W RL steps) judge every
  completion, so the head starts from a large labelled set, and the
  remaining `total_calls - W` calls judge `judge_fraction_at` of theirs,
  which keeps the run's judged share at `judge_fraction`.
  """

  def __init__(
    self,
    judge: ProcessSource,
    value_head: ProcessSource,
    judge_fraction: float = 0.25,
    seed: int = 0,
    full_judge_calls: int = 0,
    total_calls: int = 0,
    first_call: int = 0,
    select: str = "random",
  ):
    if select not in HYBRID_SELECTIONS:
      raise InputError(
        f"rl.hybrid_select={select!r}: expected one of {HYBRID_SELECTIONS}"
      )
    if not 0.0 <= judge_fraction <= 1.0:
      raise InputError(
        f"rl.hybrid_judge_fraction={judge_fraction} must be in [0, 1]"
      )
    most = max_full_judge_calls(judge_fraction, total_calls)
    if full_judge_calls > most:
      raise InputError(
        f"rl.hybrid_full_judge_steps={full_judge_calls} spends more than "
        f"the judge budget: rl.hybrid_judge_fraction={judge_fraction} of "
        f"train.steps={total_calls} allows at most {most} fully judged steps"
      )
    self.judge = judge
    self.value_head = value_head
    self.judge_fraction = judge_fraction
    self.full_judge_calls = full_judge_calls
    self.total_calls = total_calls
    self.first_call = first_call
    self.seed = seed
    self.select = select
    self.calls = 0
    self.last_judged: list[int] = []

  def judge_fraction_at(self, call: int) -> float:
    """The share of completions judged at call number `call`."""
    w = self.full_judge_calls
    if w <= 0:
      return self.judge_fraction
    if call - self.first_call < w:
      return 1.0
    rest = self.total_calls - w
    if rest <= 0:
      return 0.0
    return max(0.0, (self.judge_fraction * self.total_calls - w) / rest)

  def judged_count(self, call: int, n: int) -> int:
    """How many of `n` completions call number `call` sends to the judge.

    A constant share rounds up per call. After a front-loaded start the
    share is spread by cumulative rounding down, so the run never judges
    more than `judge_fraction` of its completions (with n per call)."""
    fraction = self.judge_fraction_at(call)
    if self.full_judge_calls <= 0 or fraction == 1.0:
      return min(n, math.ceil(fraction * n - 1e-9))
    j = call - self.first_call - self.full_judge_calls
    upto = lambda k: math.floor(fraction * n * k + 1e-9)  # noqa: E731
    return min(n, upto(j + 1) - upto(j))

  def label_steps(self, requests: Sequence[StepRequest]) -> list[StepLabels]:
    n = len(requests)
    n_judge = self.judged_count(self.calls, n)
    rng = np.random.default_rng([self.seed, self.calls])
    self.calls += 1
    order = rng.permutation(n)
    if self.select == "uncertain" and n_judge < n:
      doubt = completion_uncertainty(requests)
      order = order[np.argsort(-doubt[order], kind="stable")]
    chosen = sorted(order[:n_judge].tolist())
    out: list[StepLabels | None] = [None] * n
    judged = self.judge.label_steps([requests[i] for i in chosen])
    for i, lab in zip(chosen, judged):
      if not lab.fallback_used:
        out[i] = lab
    rest = [i for i in range(n) if out[i] is None]
    from_head = self.value_head.label_steps([requests[i] for i in rest])
    for i, lab in zip(rest, from_head):
      out[i] = lab
    self.last_judged = [i for i in chosen if out[i].source == "judge"]
    return out


class CountingSource:
  """A source whose calls are counted: completions and steps labelled.

  Wraps a simulated judge (e.g. the SynthMed verifier standing in for an
  LLM judge) so the hybrid source's judge usage can be reported; like a
  `JudgeClient` it reports `take_totals()` (one call per completion with
  steps; no cache, retries or fallbacks).
  """

  def __init__(self, inner: ProcessSource):
    self.inner = inner
    self.completions = 0
    self.steps = 0
    self._window: collections.Counter[str] = collections.Counter()

  def label_steps(self, requests: Sequence[StepRequest]) -> list[StepLabels]:
    self.completions += len(requests)
    self.steps += sum(len(r.step_texts) for r in requests)
    self._window["requests"] += len(requests)
    self._window["calls"] += sum(1 for r in requests if r.step_texts)
    return [
      dataclasses.replace(lab, source="judge")
      for lab in self.inner.label_steps(requests)
    ]

  def take_totals(self) -> dict[str, int]:
    """Counts (`JUDGE_TOTALS`) since the last call."""
    totals = {k: self._window[k] for k in JUDGE_TOTALS}
    self._window.clear()
    return totals


class NoisySource:
  """Flips each step label of `inner` with probability `flip_rate`.

  A fallible judge, simulated: the flips are drawn by
  `np.random.default_rng((seed, call number))`, so reruns flip the same
  labels. Labels that were skipped stay skipped.
  """

  def __init__(self, inner: ProcessSource, flip_rate: float, seed: int = 0):
    if not 0.0 <= flip_rate <= 0.5:
      raise InputError(
        f"rl.label_noise={flip_rate} must be in [0, 0.5] (the share of "
        "step labels flipped)"
      )
    self.inner = inner
    self.flip_rate = flip_rate
    self.seed = seed
    self.calls = 0

  def label_steps(self, requests: Sequence[StepRequest]) -> list[StepLabels]:
    labels = self.inner.label_steps(requests)
    rng = np.random.default_rng([self.seed, 7919, self.calls])
    self.calls += 1
    out = []
    for lab in labels:
      if lab.skipped or not lab.labels:
        out.append(lab)
        continue
      flip = rng.random(len(lab.labels)) < self.flip_rate
      flipped = tuple(int(v) ^ int(f) for v, f in zip(lab.labels, flip))
      out.append(dataclasses.replace(lab, labels=flipped))
    return out


def reseed(source: ProcessSource, call_number: int) -> None:
  """Sets the call counter of `source` and of the sources it wraps, so a
  resumed run draws the same judge choices and label flips as before."""
  if hasattr(source, "calls"):
    source.calls = call_number
  for name in ("inner", "judge"):
    inner = getattr(source, name, None)
    if inner is not None:
      reseed(inner, call_number)


def _chain(source: Any):
  """`source` and every source or client it wraps."""
  yield source
  for name in ("inner", "judge", "client"):
    inner = getattr(source, name, None)
    if inner is not None:
      yield from _chain(inner)


def judge_totals(source: ProcessSource) -> dict[str, float]:
  """The judge counts since the last call, as metrics: judge_requests,
  judge_calls, judge_cache_hits, judge_retries, judge_fallbacks and
  judge_fallbacks_<cause> for every `FALLBACK_CAUSES` entry.

  Read from each source in the chain with `take_totals()` (a `JudgeClient`,
  a `CountingSource`); {} when none has it (no judge: nothing to report).
  """
  counts: collections.Counter[str] = collections.Counter()
  found = False
  for s in _chain(source):
    take = getattr(s, "take_totals", None)
    if callable(take):
      counts.update(take())
      found = True
  if not found:
    return {}
  return {f"judge_{k}": float(counts[k]) for k in JUDGE_TOTALS}


def pack_labels(
  labels: Sequence[StepLabels], k_pad: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Fixed-shape arrays from per-completion labels.

  Args:
    labels: B `StepLabels`.
    k_pad: step slots per completion, at least the largest K (labels are
      never merged or dropped; a longer label list is an error).

  Returns:
    (step_valid_BxK int32[B, k_pad], padded with 0 past each K;
     has_labels_B int32[B], 0 where skipped;
     process_reward_B float32[B], the fraction of valid steps, 0 if none).
  """
  b = len(labels)
  valid = np.zeros((b, k_pad), np.int32)
  has = np.zeros(b, np.int32)
  proc = np.zeros(b, np.float32)
  for i, lab in enumerate(labels):
    if lab.skipped:
      continue
    has[i] = 1
    v = list(lab.labels)
    if len(v) > k_pad:
      raise ValueError(
        f"completion {i} has {len(v)} step labels but only {k_pad} step "
        "slots; size k_pad from the batch's largest step count"
      )
    if v:
      proc[i] = float(np.mean(v))
    valid[i, : len(v)] = v
  return valid, has, proc


def shaping_mask(
  labels: Sequence[StepLabels], k_pad: int, min_confidence: float = 0.0
) -> np.ndarray:
  """Which step labels may reshape their step's advantages: int32[B, k_pad].

  1 for each of a completion's K labels that carries no confidence (a
  verifier's or judge's label) or whose confidence, max(p, 1 - p) of the
  step-value head's probability p that the step is valid, is at least
  `min_confidence` (`rl.value_min_confidence`); 0 for the others (the
  head abstains: the step keeps its completion's advantage, as in GRPO),
  for skipped completions and past each K. `min_confidence` <= 0.5 keeps
  every label.
  """
  mask = np.zeros((len(labels), k_pad), np.int32)
  for i, lab in enumerate(labels):
    if lab.skipped:
      continue
    k = len(lab.labels)
    if k > k_pad:
      raise ValueError(
        f"completion {i} has {k} step labels but only {k_pad} step slots"
      )
    if lab.confidence is None:
      mask[i, :k] = 1
      continue
    p_K = np.asarray(lab.confidence, np.float64)[:k]
    mask[i, :k] = np.maximum(p_K, 1.0 - p_K) >= min_confidence
  return mask


def token_labels(
  step_id_BxT: np.ndarray, step_valid_BxK: np.ndarray
) -> np.ndarray:
  """The label of each token's step: int32[B, T], 0 outside steps.

  Args:
    step_id_BxT: int[B, T] 0-based step index per token, -1 outside.
    step_valid_BxK: {0,1}[B, K_pad] with K_pad above every step id.
  """
  step_id_BxT = np.asarray(step_id_BxT)
  valid_BxK = np.asarray(step_valid_BxK)
  if step_id_BxT.size and step_id_BxT.max() >= valid_BxK.shape[1]:
    raise ValueError(
      f"step id {int(step_id_BxT.max())} has no slot among "
      f"{valid_BxK.shape[1]} step labels"
    )
  idx_BxT = np.clip(step_id_BxT, 0, None)
  if valid_BxK.shape[1] == 0:
    return np.zeros(step_id_BxT.shape, np.int32)
  got_BxT = np.take_along_axis(valid_BxK, idx_BxT, axis=1)
  return np.where(step_id_BxT >= 0, got_BxT, 0).astype(np.int32)
