"""Tests for stepjax.rl.failures: hand-computed fixtures and a property test.

The fixture's numbers are worked out by hand in the comments; the property
test checks `analyze` against a plain loop written here with exact
fractions for the bin boundaries.
"""

import fractions
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepjax.rl import failures as metrics

# Completion: labels           K  k*  FFP   bin    FAR (steps after k*)
# a: 1 1 1 1                   4  -   -     -      -
# b: 0 1 0 0                   4  1   0     early  2/3  ([1, 0, 0])
# c: 1 0 1 1                   4  2   1/3   mid    0    ([1, 1])
# d: 1 1 0 1                   4  3   2/3   late   0    ([1])
# e: 1 1 1 0                   4  4   1     late   undefined (last step)
# f: 0                         1  1   0     early  undefined
# g: (no steps)                0  -   -     -      -
# h: 1                         1  -   -     -      -
FIXTURE = [
  [1, 1, 1, 1],
  [0, 1, 0, 0],
  [1, 0, 1, 1],
  [1, 1, 0, 1],
  [1, 1, 1, 0],
  [0],
  [],
  [1],
]
CORRECT = [True, False, True, False, False, False, False, True]


def test_fixture_all_quantities():
  s = metrics.analyze(FIXTURE, CORRECT)
  assert s.num_completions == 8
  assert s.num_no_steps == 1
  assert s.num_failed == 5
  assert s.num_far_undefined == 2  # e and f
  assert s.accuracy == pytest.approx(3 / 8)
  # 22 steps, 15 valid.
  assert s.step_validity == pytest.approx(15 / 22)
  # Per completion with K >= 1: 1, 1/4, 3/4, 3/4, 3/4, 0, 1.
  assert s.completion_step_validity == pytest.approx(4.5 / 7)
  assert s.mean_steps == pytest.approx(22 / 8)
  assert s.ffp_counts == {"early": 2, "mid": 1, "late": 2, "none": 2}
  assert s.ffp_shares == pytest.approx({"early": 0.4, "mid": 0.2, "late": 0.4})
  assert s.none_share == pytest.approx(2 / 7)
  assert s.mean_ffp == pytest.approx((0 + 1 / 3 + 2 / 3 + 1 + 0) / 5)
  assert s.far == pytest.approx(2 / 9)
  assert s.far_by_ffp == pytest.approx(
    {"early": 2 / 3, "mid": 0.0, "late": 0.0}
  )
  assert s.far_counts == {"early": 1, "mid": 1, "late": 1}


def test_as_dict_is_json_ready():
  import json

  d = metrics.analyze(FIXTURE, CORRECT).as_dict()
  assert json.loads(json.dumps(d)) == d


@pytest.mark.parametrize(
  "labels, ffp, far",
  [
    ([1, 1, 1, 1], None, None),  # no failure
    ([0, 1, 0, 0], 0.0, 2 / 3),
    ([1, 0, 1, 1], 1 / 3, 0.0),
    ([1, 1, 1, 0], 1.0, None),  # failure at the last step
    ([0], 0.0, None),  # K = 1
    ([1], None, None),
    ([], None, None),  # K = 0
    ([0, 0, 0], 0.0, 1.0),
  ],
)
def test_single_completion(labels, ffp, far):
  got = metrics.first_failure_point(labels)
  assert got == (None if ffp is None else pytest.approx(ffp))
  got = metrics.failure_accumulation_rate(labels)
  assert got == (None if far is None else pytest.approx(far))


@pytest.mark.parametrize(
  "first_index, k, expected",
  [
    (0, 1, "early"),  # K = 1
    (0, 2, "early"),
    (1, 2, "late"),
    (1, 4, "mid"),  # FFP = 1/3 exactly: mid
    (2, 4, "late"),  # FFP = 2/3 exactly: late
    (1, 7, "early"),  # 1/6
    (2, 7, "mid"),  # 2/6 = 1/3
    (3, 7, "mid"),  # 1/2
    (4, 7, "late"),  # 4/6 = 2/3
    (3, 10, "mid"),  # 3/9 = 1/3
    (5, 10, "mid"),  # 5/9
    (6, 10, "late"),  # 6/9 = 2/3
    (2, 3, "late"),  # 1
  ],
)
def test_bin_boundaries(first_index, k, expected):
  assert metrics.ffp_bin(first_index, k) == expected


def test_no_failures():
  s = metrics.analyze([[1, 1], [1], [1, 1, 1]], [True, True, False])
  assert s.num_failed == 0
  assert s.ffp_shares == {"early": None, "mid": None, "late": None}
  assert s.none_share == 1.0
  assert s.far is None and s.mean_ffp is None
  assert s.far_by_ffp == {"early": None, "mid": None, "late": None}
  assert s.step_validity == 1.0


def test_only_last_step_failures():
  s = metrics.analyze([[1, 0], [1, 1, 0]])
  assert s.ffp_counts["late"] == 2
  assert s.num_far_undefined == 2
  assert s.far is None
  assert s.far_counts == {"early": 0, "mid": 0, "late": 0}
  assert s.accuracy is None  # no verdicts given


def test_empty_list():
  s = metrics.analyze([], [])
  assert s.num_completions == 0
  assert s.accuracy is None and s.step_validity is None
  assert s.mean_steps is None and s.none_share is None
  assert s.ffp_counts == {"early": 0, "mid": 0, "late": 0, "none": 0}


def test_all_empty_completions():
  s = metrics.analyze([[], []], [False, True])
  assert s.num_no_steps == 2
  assert s.mean_steps == 0.0
  assert s.step_validity is None and s.none_share is None
  assert s.accuracy == 0.5


def test_numpy_and_bool_inputs():
  s = metrics.analyze([np.array([True, False, False])])
  assert s.ffp_counts["mid"] == 1  # (2-1)/(3-1) = 1/2
  assert s.far == 1.0


@pytest.mark.parametrize(
  "labels, match",
  [
    ([[1, 2]], "completion 0.*0 \\(invalid\\) or 1"),
    ([[1], [[1, 0]]], "completion 1.*1-D"),
  ],
)
def test_bad_labels_name_the_completion(labels, match):
  with pytest.raises(ValueError, match=match):
    metrics.analyze(labels)


def test_verdict_count_mismatch():
  with pytest.raises(ValueError, match="2 answer verdicts for 1"):
    metrics.analyze([[1]], [True, False])


def test_ffp_bin_rejects_out_of_range():
  with pytest.raises(ValueError, match="outside a 3-step"):
    metrics.ffp_bin(3, 3)


def _reference(step_labels, correct):
  """Straightforward loop implementation of the documented conventions."""
  third = fractions.Fraction(1, 3)
  total, valid, per_completion, ks = 0, 0, [], []
  counts = {"early": 0, "mid": 0, "late": 0}
  fars = {"early": [], "mid": [], "late": []}
  none, undefined, nonempty = 0, 0, 0
  for labels in step_labels:
    k = len(labels)
    ks.append(k)
    if k == 0:
      continue
    nonempty += 1
    total += k
    valid += sum(labels)
    per_completion.append(sum(labels) / k)
    first = None
    for i, lab in enumerate(labels):
      if lab == 0:
        first = i
        break
    if first is None:
      none += 1
      continue
    ffp = fractions.Fraction(0) if k == 1 else fractions.Fraction(first, k - 1)
    name = "early" if ffp < third else ("mid" if ffp < 2 * third else "late")
    counts[name] += 1
    after = labels[first + 1 :]
    if not after:
      undefined += 1
    else:
      fars[name].append(sum(1 for x in after if x == 0) / len(after))
  failed = sum(counts.values())

  def mean(xs):
    return sum(xs) / len(xs) if xs else None

  return {
    "accuracy": mean([float(c) for c in correct]),
    "step_validity": valid / total if total else None,
    "completion_step_validity": mean(per_completion),
    "mean_steps": mean(ks),
    "counts": {**counts, "none": none},
    "shares": {n: (c / failed if failed else None) for n, c in counts.items()},
    "none_share": none / nonempty if nonempty else None,
    "far": mean([v for n in fars for v in fars[n]]),
    "far_by_ffp": {n: mean(v) for n, v in fars.items()},
    "undefined": undefined,
  }


def _close(a, b):
  if a is None or b is None:
    return a is None and b is None
  return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


_completions = st.lists(
  st.lists(st.integers(0, 1), min_size=0, max_size=12), max_size=20
)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), step_labels=_completions)
def test_matches_reference_loop(data, step_labels):
  correct = data.draw(
    st.lists(
      st.booleans(), min_size=len(step_labels), max_size=len(step_labels)
    )
  )
  got = metrics.analyze(step_labels, correct)
  want = _reference(step_labels, correct)
  for key in (
    "accuracy",
    "step_validity",
    "completion_step_validity",
    "mean_steps",
    "none_share",
    "far",
  ):
    assert _close(getattr(got, key), want[key]), key
  assert got.ffp_counts == want["counts"]
  assert got.num_far_undefined == want["undefined"]
  for name in metrics.BINS:
    assert _close(got.ffp_shares[name], want["shares"][name])
    assert _close(got.far_by_ffp[name], want["far_by_ffp"][name])


def test_chain_answer_agreement_counts_contradicting_answers():
  from stepjax.rl import failures as m

  got = m.chain_answer_agreement(
    [
      "So the answer is left.",  # answer "right": contradicts
      "So the answer is left kidney.",  # matches
      "So the Answer is two.",  # "2": matches after normalising
      "The liver has 2 lesions.",  # states no answer: not checked
      None,  # no steps: not checked
    ],
    ["right", "Left kidney", "2", "2", "3"],
  )
  assert got == {"checked": 3, "contradicted": 1, "share": 1 / 3}
  assert m.chain_answer_agreement([], []) == {
    "checked": 0,
    "contradicted": 0,
    "share": None,
  }
