"""Reasoning-failure analysis over per-step validity labels (pure numpy).

Implements the evaluation of /work/shared/MRPO_SPEC.md ("Evaluation in the
paper"): answer accuracy, step validity, the First Failure Point (FFP) and
the Failure Accumulation Rate (FAR).

Input: N completions; completion i has K_i steps (K varies, K = 0 allowed)
and `labels_K`, an int array of K values in {0, 1}, 1 = valid step. Steps are
numbered k = 1..K.

Conventions (exact; the tests pin every one of them):

- Step validity: `step_validity` is the mean label over all steps of all
  completions (long completions weigh more); `completion_step_validity` is
  the mean over completions with K >= 1 of each completion's fraction of
  valid steps (every completion weighs the same).
- First Failure Point of a completion: k* = the first k with label 0;
  FFP = (k* - 1) / (K - 1), in [0, 1]; FFP = 0.0 when K = 1. A completion
  with no invalid step has no FFP (None, "no failure").
- FFP bins, computed in exact integer arithmetic so that the boundaries are
  not subject to rounding:
    early: FFP in [0, 1/3)    <=>  3 (k* - 1) <  (K - 1)
    mid:   FFP in [1/3, 2/3)  <=>  (K - 1) <= 3 (k* - 1) < 2 (K - 1)
    late:  FFP in [2/3, 1]    <=>  3 (k* - 1) >= 2 (K - 1)
  so FFP = 1/3 is mid and FFP = 2/3 is late; K = 1 failures are early.
- FFP distribution: `ffp_shares[bin]` = failing completions in the bin /
  all failing completions (early + mid + late = 1 when any failed);
  `none_share` = completions with no failure / completions with K >= 1.
  Completions with K = 0 have neither steps nor a failure point: they are
  counted in `num_no_steps` and left out of both denominators.
- Failure Accumulation Rate of a failing completion: among the steps after
  the first failure (k > k*), the fraction that are invalid. It is undefined
  when k* = K (no step follows); such completions are left out of every FAR
  mean and counted in `num_far_undefined`. `far` is the mean over the
  completions with a defined FAR; `far_by_ffp[bin]` the same mean within
  one FFP bin (None when the bin has no defined FAR).
- `mean_steps`: mean K over all N completions (K = 0 included).
- A mean over nothing is None (never NaN), so results serialise to JSON.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

EARLY, MID, LATE = "early", "mid", "late"
BINS = (EARLY, MID, LATE)


def _as_labels(labels: Any, index: int | None = None) -> np.ndarray:
  """Validates one completion's labels into int64[K] of 0/1."""
  arr = np.asarray(labels)
  where = "" if index is None else f" of completion {index}"
  if arr.ndim != 1:
    raise ValueError(
      f"step labels{where} must be a 1-D sequence of 0/1, got shape {arr.shape}"
    )
  if arr.size and not np.isin(arr, (0, 1)).all():
    bad = arr[~np.isin(arr, (0, 1))][:3].tolist()
    raise ValueError(
      f"step labels{where} must be 0 (invalid) or 1 (valid), got {bad}"
    )
  return arr.astype(np.int64)


def first_failure_index(labels_K: Any) -> int | None:
  """0-based index (k* - 1) of the first invalid step, None if none."""
  labels_K = _as_labels(labels_K)
  invalid = np.flatnonzero(labels_K == 0)
  return int(invalid[0]) if invalid.size else None


def first_failure_point(labels_K: Any) -> float | None:
  """FFP = (k* - 1) / (K - 1) of int[K] labels; 0.0 if K = 1; None if none.

  K = 0 also gives None (no step, so no failure point).
  """
  labels_K = _as_labels(labels_K)
  f = first_failure_index(labels_K)
  if f is None:
    return None
  k = labels_K.size
  return 0.0 if k == 1 else f / (k - 1)


def ffp_bin(first_index: int, num_steps: int) -> str:
  """The FFP bin (early | mid | late) of a failure at 0-based `first_index`.

  Exact integer comparison of 3 (k* - 1) against (K - 1) and 2 (K - 1); see
  the module docstring. K = 1 is early.
  """
  if not 0 <= first_index < num_steps:
    raise ValueError(
      f"first failure index {first_index} outside a {num_steps}-step completion"
    )
  span, pos3 = num_steps - 1, 3 * first_index
  if span == 0 or pos3 < span:  # K = 1 has FFP 0.0
    return EARLY
  if pos3 < 2 * span:
    return MID
  return LATE


def failure_accumulation_rate(labels_K: Any) -> float | None:
  """Fraction of invalid steps among those after the first invalid one.

  None when there is no failure or the first failure is the last step.
  """
  labels_K = _as_labels(labels_K)
  f = first_failure_index(labels_K)
  if f is None or f == labels_K.size - 1:
    return None
  return float(np.mean(labels_K[f + 1 :] == 0))


def _mean(values: Sequence[float] | np.ndarray) -> float | None:
  return float(np.mean(values)) if len(values) else None


@dataclasses.dataclass(frozen=True)
class FailureStats:
  """Aggregate reasoning-failure statistics of N completions.

  See the module docstring for the exact definitions. Every float is None
  when its denominator is 0.
  """

  num_completions: int
  num_no_steps: int  # completions with K = 0
  num_failed: int  # completions with at least one invalid step
  num_far_undefined: int  # failing completions whose first failure is last
  accuracy: float | None
  step_validity: float | None
  completion_step_validity: float | None
  mean_steps: float | None
  ffp_counts: dict[str, int]  # early, mid, late, none
  ffp_shares: dict[str, float | None]  # early, mid, late (of failing)
  none_share: float | None  # no failure, of completions with K >= 1
  mean_ffp: float | None  # mean FFP over failing completions
  far: float | None
  far_by_ffp: dict[str, float | None]
  far_counts: dict[str, int]  # defined FARs per bin

  def as_dict(self) -> dict[str, Any]:
    """A JSON-serialisable copy."""
    return dataclasses.asdict(self)


def analyze(
  step_labels: Sequence[Any], correct: Sequence[bool] | None = None
) -> FailureStats:
  """Accuracy, step validity, FFP and FAR of N completions.

  Args:
    step_labels: N sequences (one per completion) of K_i labels in {0, 1}.
    correct: N answer verdicts, or None when answers were not judged
      (accuracy is then None).

  Returns:
    FailureStats; for N = 0 every count is 0 and every mean is None.
  """
  labels = [_as_labels(x, i) for i, x in enumerate(step_labels)]
  n = len(labels)
  if correct is not None and len(correct) != n:
    raise ValueError(
      f"got {len(correct)} answer verdicts for {n} completions; pass one "
      "per completion"
    )
  num_steps_N = np.array([x.size for x in labels], dtype=np.int64)
  nonempty = [x for x in labels if x.size]
  all_steps = np.concatenate(nonempty) if nonempty else np.zeros(0)

  ffp_counts = {b: 0 for b in BINS}
  far_lists: dict[str, list[float]] = {b: [] for b in BINS}
  ffps: list[float] = []
  num_far_undefined = 0
  for x in nonempty:
    f = first_failure_index(x)
    if f is None:
      continue
    bin_name = ffp_bin(f, x.size)
    ffp_counts[bin_name] += 1
    ffps.append(0.0 if x.size == 1 else f / (x.size - 1))
    far = failure_accumulation_rate(x)
    if far is None:
      num_far_undefined += 1
    else:
      far_lists[bin_name].append(far)

  num_failed = sum(ffp_counts.values())
  num_none = len(nonempty) - num_failed
  all_far = [v for b in BINS for v in far_lists[b]]
  return FailureStats(
    num_completions=n,
    num_no_steps=n - len(nonempty),
    num_failed=num_failed,
    num_far_undefined=num_far_undefined,
    accuracy=(
      None if correct is None else _mean([float(bool(c)) for c in correct])
    ),
    step_validity=_mean(all_steps),
    completion_step_validity=_mean([float(np.mean(x)) for x in nonempty]),
    mean_steps=_mean(num_steps_N),
    ffp_counts={**ffp_counts, "none": num_none},
    ffp_shares={
      b: (ffp_counts[b] / num_failed if num_failed else None) for b in BINS
    },
    none_share=num_none / len(nonempty) if nonempty else None,
    mean_ffp=_mean(ffps),
    far=_mean(all_far),
    far_by_ffp={b: _mean(far_lists[b]) for b in BINS},
    far_counts={b: len(far_lists[b]) for b in BINS},
  )


# A last step that states the answer: "So the answer is left kidney."
_CONCLUSION = re.compile(r"\banswer is\s+(.+?)[\s.]*$", re.IGNORECASE)


def chain_answer_agreement(
  last_steps: Sequence[str | None], answers: Sequence[str]
) -> dict[str, Any]:
  """Whether each answer is the one its own reasoning concluded.

  A completion is checked when its last step states an answer ("... answer
  is X."); it contradicts its chain when X does not match the answer tag
  (`rl.rewards.answers_match`, the accuracy's own rule). A policy trained
  on answer and step rewards separately can learn answers that its chain
  does not support; accuracy alone cannot show that.

  Returns {"checked": n, "contradicted": m, "share": m / n (None if n = 0)}.
  """
  from stepjax.rl import rewards  # (it loads the ROUGE scorer: only here)

  checked = contradicted = 0
  for step, answer in zip(last_steps, answers, strict=True):
    m = _CONCLUSION.search(step or "")
    if m is None:
      continue
    checked += 1
    contradicted += not rewards.answers_match(answer, m.group(1))
  return {
    "checked": checked,
    "contradicted": contradicted,
    "share": contradicted / checked if checked else None,
  }
