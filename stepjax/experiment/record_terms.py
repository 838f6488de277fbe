"""Each eval metric as a ratio of per-record sums, for resampling.

Every metric of `stepjax.rl.failures.analyze` is sum(num_N) / sum(den_N)
over the N eval records for some per-record numerator and denominator
(accuracy: correct / 1; step validity: valid steps / steps; an FFP share:
[failed in that bin] / [failed]; early failures: [failed in the early bin]
/ [has steps], the early share of all completions, not of the failing
ones; FAR: the record's FAR / [FAR defined];
answers contradicting the chain, `metrics.chain_answer_agreement`:
[contradicted] / [last step states an answer]).
Written that way, a bootstrap replicate that draws record i c_i times has
the metric sum(c_i num_i) / sum(c_i den_i): one matrix product for all
metrics at once (bootstrap.py). `ratios(terms(records))` equals `analyze`
on the same records (tests/experiment/test_bootstrap.py checks it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stepjax.rl import failures as metrics

METRICS = (
  "accuracy",
  "step_validity",
  "ffp_early",
  "ffp_mid",
  "ffp_late",
  "early_failure",
  "no_failure",
  "far",
  "far_early",
  "far_mid",
  "far_late",
  "mean_steps",
  "answer_contradicts_chain",
)


def terms(
  records: Sequence[Mapping[str, Any]],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """metric -> (num_N, den_N) float arrays over the eval records."""
  n = len(records)
  num = {m: np.zeros(n) for m in METRICS}
  den = {m: np.zeros(n) for m in METRICS}
  for i, record in enumerate(records):
    labels = np.asarray(record["step_labels"], dtype=np.int64)
    k = labels.size
    num["accuracy"][i], den["accuracy"][i] = float(bool(record["correct"])), 1
    num["step_validity"][i], den["step_validity"][i] = labels.sum(), k
    num["mean_steps"][i], den["mean_steps"][i] = k, 1
    chain = metrics.chain_answer_agreement(
      [record["steps"][-1] if record.get("steps") else None],
      [record.get("answer", "")],
    )
    num["answer_contradicts_chain"][i] = chain["contradicted"]
    den["answer_contradicts_chain"][i] = chain["checked"]
    if k == 0:
      continue  # no steps: neither a failure nor a "no failure"
    first = metrics.first_failure_index(labels)
    den["no_failure"][i] = den["early_failure"][i] = 1
    if first is None:
      num["no_failure"][i] = 1
      continue
    stage = metrics.ffp_bin(first, k)
    for b in metrics.BINS:
      den[f"ffp_{b}"][i] = 1
    num[f"ffp_{stage}"][i] = 1
    num["early_failure"][i] = float(stage == metrics.EARLY)
    far = metrics.failure_accumulation_rate(labels)
    if far is not None:
      num["far"][i], den["far"][i] = far, 1
      num[f"far_{stage}"][i], den[f"far_{stage}"][i] = far, 1
  return {m: (num[m], den[m]) for m in METRICS}


def ratio(num: float, den: float) -> float:
  """num / den, NaN when den is 0 (a metric over nothing)."""
  return float(num) / float(den) if den else float("nan")


def ratios(t: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
  """The metrics of all records (each record drawn once)."""
  return {m: ratio(num.sum(), den.sum()) for m, (num, den) in t.items()}
