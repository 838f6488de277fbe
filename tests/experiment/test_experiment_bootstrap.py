"""The hierarchical bootstrap and the per-record metric terms."""

import numpy as np
import pytest

from stepjax.experiment import bootstrap, record_terms
from stepjax.rl import failures as metrics


def _records(rng, n, p_correct=0.5):
  out = []
  for i in range(n):
    k = int(rng.integers(0, 7))  # K = 0 and K = 1 included
    labels = (rng.random(k) < 0.7).astype(int).tolist()
    out.append(
      {"id": str(i), "correct": bool(rng.random() < p_correct),
       "step_labels": labels}
    )  # fmt: skip
  return out


def test_terms_reproduce_analyze():
  rng = np.random.default_rng(0)
  records = _records(rng, 300)
  got = record_terms.ratios(record_terms.terms(records))
  s = metrics.analyze(
    [r["step_labels"] for r in records], [r["correct"] for r in records]
  )
  want = {
    "accuracy": s.accuracy,
    "step_validity": s.step_validity,
    "ffp_early": s.ffp_shares["early"],
    "ffp_mid": s.ffp_shares["mid"],
    "ffp_late": s.ffp_shares["late"],
    "early_failure": s.ffp_counts["early"] / sum(s.ffp_counts.values()),
    "no_failure": s.none_share,
    "far": s.far,
    "far_early": s.far_by_ffp["early"],
    "far_mid": s.far_by_ffp["mid"],
    "far_late": s.far_by_ffp["late"],
    "mean_steps": s.mean_steps,
  }
  assert set(got) == set(record_terms.METRICS)
  for name, value in want.items():
    assert got[name] == pytest.approx(value, abs=1e-12), name


def _bernoulli_terms(values_N):
  values_N = np.asarray(values_N, float)
  return values_N, np.ones_like(values_N)


def test_interval_covers_the_true_mean():
  """Seeds with their own success rate around p = 0.3, records drawn from
  it: the 95% interval of the mean over seeds contains p in most of 40
  synthetic grids (fixed seeds: deterministic)."""
  p, covered = 0.3, 0
  for trial in range(40):
    rng = np.random.default_rng(1000 + trial)
    rates = np.clip(p + rng.normal(0, 0.03, size=4), 0, 1)
    data = {"m": [_bernoulli_terms(rng.random(200) < r) for r in rates]}
    reps = bootstrap.replicates(data, samples=400, seed=trial)
    est = bootstrap.estimate(bootstrap.point(data)["m"], reps["m"])
    lo, hi = est["ci"]
    assert lo <= est["value"] <= hi
    covered += lo <= p <= hi
  assert covered >= 32, f"covered the true mean in {covered}/40 grids"


def test_paired_interval_is_narrower_on_correlated_records():
  """Two methods that agree on most scans: resampling the same scans for
  both (paired) gives a much narrower interval for a - b than resampling
  them independently."""
  rng = np.random.default_rng(7)
  per_seed_a, per_seed_b = [], []
  for _ in range(3):
    easy = rng.random(300) < 0.5
    flips = rng.random(300) < 0.1
    per_seed_a.append(_bernoulli_terms(easy))
    per_seed_b.append(_bernoulli_terms(easy ^ flips))
  data = {"a": per_seed_a, "b": per_seed_b}
  points = bootstrap.point(data)
  paired = bootstrap.replicates(data, samples=1000, seed=0)
  alone_a = bootstrap.replicates({"a": per_seed_a}, samples=1000, seed=1)
  alone_b = bootstrap.replicates({"b": per_seed_b}, samples=1000, seed=2)
  d_paired = bootstrap.difference(
    points["a"], points["b"], paired["a"], paired["b"]
  )
  d_unpaired = bootstrap.difference(
    points["a"], points["b"], alone_a["a"], alone_b["b"]
  )
  assert d_paired["value"] == d_unpaired["value"]
  width = lambda d: d["ci"][1] - d["ci"][0]
  assert width(d_paired) < 0.5 * width(d_unpaired)


def test_same_seed_same_replicates():
  rng = np.random.default_rng(3)
  data = {
    ("g", m): [t[m] for t in (record_terms.terms(_records(rng, 50)),) * 2]
    for m in ("accuracy", "ffp_early")
  }
  a = bootstrap.replicates(data, samples=300, seed=5)
  b = bootstrap.replicates(data, samples=300, seed=5)
  c = bootstrap.replicates(data, samples=300, seed=6)
  for key in data:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a[("g", "accuracy")], c[("g", "accuracy")])
  assert a[("g", "accuracy")].shape == (300, 2)


def test_undefined_metrics_and_relative_change():
  none = (np.zeros(4), np.zeros(4))  # no denominator: undefined
  some = (np.array([1.0, 0, 0, 0]), np.ones(4))
  data = {"x": [none, some], "y": [none, none]}
  reps = bootstrap.replicates(data, samples=200, seed=0)
  points = bootstrap.point(data)
  x = bootstrap.estimate(points["x"], reps["x"])
  assert x["value"] == 0.25  # the seed without the metric is left out
  assert bootstrap.estimate(points["y"], reps["y"]) == {
    "value": None,
    "ci": None,
  }
  half = {"a": [(np.full(10, 0.1), np.ones(10))],
          "b": [(np.full(10, 0.2), np.ones(10))]}  # fmt: skip
  reps = bootstrap.replicates(half, samples=100, seed=0)
  points = bootstrap.point(half)
  rel = bootstrap.relative_difference(
    points["a"], points["b"], reps["a"], reps["b"]
  )
  assert rel["value"] == pytest.approx(-0.5)
  assert rel["ci"] == pytest.approx([-0.5, -0.5])


def test_mismatched_record_counts_fail():
  data = {"a": [_bernoulli_terms([1, 0])], "b": [_bernoulli_terms([1])]}
  with pytest.raises(ValueError, match="that seed's eval records"):
    bootstrap.replicates(data, samples=100, seed=0)
