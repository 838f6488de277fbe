"""Agreement of a step judge with known step truth (pure numpy).

Input: N completions; completion i has K_i steps with true labels
`truth_K` (the SynthMed verifier's) and judged labels `judged_K` (the step
judge's), both 0/1 with 1 = valid. The positive class is INVALID (0): the
judge's job in MRPO is to find the steps to penalise.

- `agreement`: steps where judge and truth agree / all steps.
- precision, recall, F1 of "invalid": of the steps the judge calls
  invalid, the share truly invalid; of the truly invalid steps, the share
  the judge calls invalid; their harmonic mean. None when undefined (no
  step called invalid, no invalid step).
- `kappa`: Cohen's kappa (agreement corrected for chance); None when the
  chance agreement is 1.
- `confusion`: {"truth_valid" | "truth_invalid": {"judge_valid" |
  "judge_invalid": count}}.
- `by_position`: the same numbers per step position, bucketed as the First
  Failure Point is (`rl.failures.ffp_bin` of the step's 0-based index:
  early [0, 1/3), mid [1/3, 2/3), late [2/3, 1] of the chain; a one-step
  chain is early).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stepjax.rl import failures as metrics


def _ratio(num: int, den: int) -> float | None:
  return num / den if den else None


def summarize(truth_S: np.ndarray, judged_S: np.ndarray) -> dict[str, Any]:
  """Agreement numbers of S steps (flat 0/1 arrays, 1 = valid)."""
  truth_S = np.asarray(truth_S, np.int64)
  judged_S = np.asarray(judged_S, np.int64)
  if truth_S.shape != judged_S.shape:
    raise ValueError(
      f"{truth_S.size} true labels but {judged_S.size} judged labels"
    )
  s = int(truth_S.size)
  tp = int(np.sum((truth_S == 0) & (judged_S == 0)))  # invalid, caught
  fp = int(np.sum((truth_S == 1) & (judged_S == 0)))  # valid, called invalid
  fn = int(np.sum((truth_S == 0) & (judged_S == 1)))  # invalid, missed
  tn = s - tp - fp - fn
  precision = _ratio(tp, tp + fp)
  recall = _ratio(tp, tp + fn)
  f1 = (
    None
    if precision is None or recall is None
    else (
      0.0
      if precision + recall == 0
      else 2 * precision * recall / (precision + recall)
    )
  )
  agreement = _ratio(tp + tn, s)
  kappa = None
  if s:
    p_truth_inv, p_judge_inv = (tp + fn) / s, (tp + fp) / s
    chance = p_truth_inv * p_judge_inv + (1 - p_truth_inv) * (1 - p_judge_inv)
    kappa = None if chance >= 1.0 else (agreement - chance) / (1.0 - chance)
  return {
    "steps": s,
    "agreement": agreement,
    "precision_invalid": precision,
    "recall_invalid": recall,
    "f1_invalid": f1,
    "kappa": kappa,
    "truth_invalid_share": _ratio(tp + fn, s),
    "judged_invalid_share": _ratio(tp + fp, s),
    "confusion": {
      "truth_valid": {"judge_valid": tn, "judge_invalid": fp},
      "truth_invalid": {"judge_valid": fn, "judge_invalid": tp},
    },
  }


def positions(num_steps: int) -> list[str]:
  """The position bucket (early | mid | late) of each of K steps."""
  return [metrics.ffp_bin(k, num_steps) for k in range(num_steps)]


def agreement(
  truth: Sequence[Sequence[int]], judged: Sequence[Sequence[int]]
) -> dict[str, Any]:
  """`summarize` over every step of N completions, plus `by_position`.

  Args:
    truth: N sequences of K_i true labels.
    judged: N sequences of K_i judged labels (same lengths).
  """
  if len(truth) != len(judged):
    raise ValueError(
      f"{len(truth)} true label lists but {len(judged)} judged ones"
    )
  flat_t, flat_j, flat_p = [], [], []
  for i, (t, j) in enumerate(zip(truth, judged)):
    if len(t) != len(j):
      raise ValueError(
        f"completion {i}: {len(t)} true labels but {len(j)} judged labels"
      )
    flat_t += [int(v) for v in t]
    flat_j += [int(v) for v in j]
    flat_p += positions(len(t))
  t_S, j_S = np.array(flat_t, np.int64), np.array(flat_j, np.int64)
  p_S = np.array(flat_p, dtype=object)
  out = summarize(t_S, j_S)
  out["by_position"] = {
    b: summarize(t_S[p_S == b], j_S[p_S == b]) for b in metrics.BINS
  }
  return out
