"""Process-reward sources: verifier, value head, hybrid, packing."""

import numpy as np
import pytest

from stepjax.rl import process


def req(i, steps, logits=None, meta=None):
  return process.StepRequest(
    record_id=f"r{i}",
    question="q",
    reference="a",
    step_texts=tuple(steps),
    meta=meta if meta is not None else {"scene": {"side": "left"}},
    value_logits=None if logits is None else np.asarray(logits),
  )


def test_verifier_source():
  def verify(texts, scene):
    return [scene["side"] in t for t in texts]

  src = process.VerifierSource(verify)
  out = src.label_steps([req(0, ["left lung.", "right lung."]), req(1, [])])
  assert out[0].labels == (1, 0) and out[0].source == "verifier"
  assert out[1].labels == ()
  with pytest.raises(ValueError, match="record r2.*scene"):
    src.label_steps([req(2, ["x"], meta={})])
  bad = process.VerifierSource(lambda t, s: [True])
  with pytest.raises(ValueError, match="one per step"):
    bad.label_steps([req(3, ["a", "b"])])


def test_value_head_source():
  src = process.ValueHeadSource(threshold=0.5)
  out = src.label_steps([req(0, ["a", "b", "c"], logits=[2.0, -1.0, 0.0, 9])])
  assert out[0].labels == (1, 0, 1)
  np.testing.assert_allclose(
    out[0].confidence, [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(1)), 0.5]
  )
  assert out[0].source == "value_head"
  with pytest.raises(ValueError, match="value_logits"):
    src.label_steps([req(1, ["a"])])


class FakeJudge:
  def __init__(self, fail=()):
    self.seen = []
    self.fail = set(fail)

  def label_steps(self, requests):
    self.seen.extend(r.record_id for r in requests)
    return [
      process.StepLabels(
        (1,) * len(r.step_texts),
        source="judge",
        fallback_used=r.record_id in self.fail,
      )
      for r in requests
    ]


def test_hybrid_source_deterministic():
  reqs = [req(i, ["a", "b"], logits=[-5.0, -5.0]) for i in range(8)]
  runs = []
  for _ in range(2):
    judge = FakeJudge()
    src = process.HybridSource(
      judge, process.ValueHeadSource(), judge_fraction=0.25, seed=3
    )
    out = src.label_steps(reqs)
    out2 = src.label_steps(reqs)
    runs.append((list(judge.seen), src.last_judged))
    assert len(src.last_judged) == 2
    for i, lab in enumerate(out2):
      want = "judge" if i in src.last_judged else "value_head"
      assert lab.source == want
      assert lab.labels == ((1, 1) if want == "judge" else (0, 0))
    assert [lab.source for lab in out].count("judge") == 2
  assert runs[0] == runs[1]  # same seed: same choice


def test_hybrid_judge_fallback_uses_value_head():
  reqs = [req(i, ["a"], logits=[3.0]) for i in range(4)]
  judge = FakeJudge(fail={f"r{i}" for i in range(4)})
  src = process.HybridSource(judge, process.ValueHeadSource(), 1.0)
  out = src.label_steps(reqs)
  assert all(lab.source == "value_head" for lab in out)
  assert src.last_judged == []
  with pytest.raises(ValueError, match="hybrid_judge_fraction"):
    process.HybridSource(judge, process.ValueHeadSource(), 1.5)


def test_hybrid_front_loaded_budget_keeps_the_total_share():
  # 10 calls numbered from 100 (a global step counter) of 10 completions,
  # 20% judged in all, the first call judging everything: the other 9
  # share the remaining 10 judge calls (1/9 each, rounded cumulatively).
  reqs = [req(i, ["a"], logits=[-5.0]) for i in range(10)]
  src = process.HybridSource(
    FakeJudge(),
    process.ValueHeadSource(),
    judge_fraction=0.2,
    full_judge_calls=1,
    total_calls=10,
    first_call=100,
  )
  judged = []
  for call in range(100, 110):
    process.reseed(src, call)
    src.label_steps(reqs)
    judged.append(len(src.last_judged))
  assert judged == [10] + [1] * 8 + [2]
  assert sum(judged) == 20  # = 0.2 x 10 calls x 10 completions
  assert src.judge_fraction_at(100) == 1.0
  assert src.judge_fraction_at(101) == pytest.approx(1.0 / 9)
  with pytest.raises(ValueError, match="at most 2 fully judged steps"):
    process.HybridSource(
      FakeJudge(),
      process.ValueHeadSource(),
      judge_fraction=0.2,
      full_judge_calls=3,
      total_calls=10,
    )


def test_completion_uncertainty_against_the_product_formula():
  logits = [[0.0], [4.0, -4.0], [9.0, 9.0, 9.0], [], [0.3, -2.0]]
  reqs = [
    req(i, ["s"] * len(x), logits=x or None) for i, x in enumerate(logits)
  ]
  got = process.completion_uncertainty(reqs)
  for i, x in enumerate(logits):
    p = 1 / (1 + np.exp(-np.asarray(x, np.float64)))
    want = 1 - np.prod(np.maximum(p, 1 - p)) if x else 0.0
    assert got[i] == pytest.approx(want, rel=1e-12, abs=1e-15)
  assert got[0] == pytest.approx(0.5)
  # 200 confident steps: no rounding to 0 (1 - (1 - 1e-9)^200 = 2e-7).
  far = req(9, ["s"] * 200, logits=[np.log(1e9)] * 200)
  assert process.completion_uncertainty([far])[0] == pytest.approx(2e-7, 1e-6)
  with pytest.raises(ValueError, match="record r7.*step-value logits"):
    process.completion_uncertainty([req(7, ["a", "b"], logits=[1.0])])


def test_hybrid_uncertain_judges_the_least_certain_completions():
  # Head logits from sure (|x| = 6) to unsure (0): completions 5 and 2
  # carry the two least certain chains and must be the two judged, in
  # every call, whatever the seed's random order.
  margins = [6.0, 5.0, 0.1, 4.0, 3.0, 0.0, 2.5, 6.0]
  reqs = [req(i, ["a", "b"], logits=[m, -m]) for i, m in enumerate(margins)]
  for seed in range(4):
    judge = FakeJudge()
    src = process.HybridSource(
      judge, process.ValueHeadSource(), 0.25, seed=seed, select="uncertain"
    )
    out = src.label_steps(reqs)
    assert src.last_judged == [2, 5]
    assert [lab.source for lab in out].count("judge") == 2
    assert sorted(judge.seen) == ["r2", "r5"]
  # Ties (all equally sure) fall back to the seeded random order, which
  # is the random selection's own: the same completions either way.
  flat = [req(i, ["a"], logits=[1.0]) for i in range(8)]
  picks = []
  for select in ("random", "uncertain"):
    src = process.HybridSource(
      FakeJudge(), process.ValueHeadSource(), 0.5, seed=1, select=select
    )
    src.label_steps(flat)
    picks.append(src.last_judged)
  assert picks[0] == picks[1] and len(picks[0]) == 4
  with pytest.raises(ValueError, match="rl.hybrid_select='best'"):
    process.HybridSource(FakeJudge(), process.ValueHeadSource(), select="best")


def test_label_error_rates_by_hand():
  lab = lambda *x, skipped=False: process.StepLabels(x, skipped=skipped)  # noqa: E731
  given = [lab(1, 0, 0), lab(1, 1), lab(0, 0, skipped=True), lab()]
  truth = [lab(1, 1, 0), lab(0, 1), lab(1, 1), lab()]
  # Valid in truth (skipped one left out): 3 steps, 1 labelled invalid;
  # invalid in truth: 2 steps, 1 labelled valid.
  got = process.label_error_rates(given, truth)
  assert got == {
    "label_false_invalid_share": pytest.approx(1 / 3),
    "label_false_valid_share": pytest.approx(1 / 2),
  }
  none_invalid = process.label_error_rates([lab(1)], [lab(1)])
  assert none_invalid["label_false_invalid_share"] == 0.0
  assert np.isnan(none_invalid["label_false_valid_share"])
  with pytest.raises(ValueError, match="step count"):
    process.label_error_rates([lab(1, 0)], [lab(1)])


def test_label_error_rates_over_used_labels():
  lab = lambda *x: process.StepLabels(x)  # noqa: E731
  given = [lab(1, 0, 0), lab(1, 1)]
  truth = [lab(1, 1, 0), lab(0, 1)]
  # Used: steps 0 and 2 of the first, step 1 of the second (k_pad 4).
  used = np.array([[1, 0, 1, 0], [0, 1, 0, 0]], np.int32)
  got = process.label_error_rates(given, truth, used)
  # All labels as before; used ones: valid in truth are steps (0, 0) and
  # (1, 1), both labelled valid; invalid in truth: (0, 2), labelled invalid.
  assert got["label_false_invalid_share"] == pytest.approx(1 / 3)
  assert got["label_false_valid_share"] == pytest.approx(1 / 2)
  assert got["label_used_false_invalid_share"] == 0.0
  assert got["label_used_false_valid_share"] == 0.0
  assert got["label_abstained_share"] == pytest.approx(2 / 5)
  # No label here has a confidence (all a judge's): no head-only rates.
  assert np.isnan(got["label_head_used_false_invalid_share"])
  assert np.isnan(got["label_head_used_false_valid_share"])
  assert got["label_head_used_valid_steps"] == 0.0
  assert got["label_head_valid_steps"] == got["label_head_invalid_steps"] == 0
  assert got["label_used_valid_steps"] == 2.0  # (0, 0) and (1, 1)
  assert got["label_used_invalid_steps"] == 1.0  # (0, 2)


def test_label_error_rates_over_the_heads_used_labels():
  judge = process.StepLabels((0, 1))  # right by construction
  head = process.StepLabels((1, 1, 0), confidence=(0.9, 0.95, 0.2))
  unsure = process.StepLabels((0, 1), confidence=(0.4, 0.6))
  given = [judge, head, unsure]
  truth = [
    process.StepLabels((0, 1)),
    process.StepLabels((0, 1, 1)),  # step 0: invalid called valid;
    process.StepLabels((1, 1)),  # step 2: valid called invalid
  ]
  used = process.shaping_mask(given, 4, min_confidence=0.8)
  got = process.label_error_rates(given, truth, used)
  # Head labels that shaped: the second completion's three steps. Truly
  # invalid there: step 0 (called valid); truly valid: 1 and 2 (2 invalid).
  assert got["label_head_used_false_valid_share"] == 1.0
  assert got["label_head_used_false_invalid_share"] == pytest.approx(1 / 2)
  # ... and their denominators: 1 truly invalid, 2 truly valid steps; with
  # the judge's two steps in, 2 and 3.
  assert got["label_head_used_invalid_steps"] == 1.0
  assert got["label_head_used_valid_steps"] == 2.0
  assert got["label_used_invalid_steps"] == 2.0
  assert got["label_used_valid_steps"] == 3.0
  # Every step of the head's two completions, shaped or not: truly
  # invalid (1, 0); truly valid (1, 1), (1, 2), (2, 0), (2, 1).
  assert got["label_head_invalid_steps"] == 1.0
  assert got["label_head_valid_steps"] == 4.0
  # With the judge's labels in: invalid (0,0) right, (1,0) wrong -> 1/2;
  # valid (0,1), (1,1) right, (1,2) wrong -> 1/3.
  assert got["label_used_false_valid_share"] == pytest.approx(1 / 2)
  assert got["label_used_false_invalid_share"] == pytest.approx(1 / 3)
  assert got["label_abstained_share"] == pytest.approx(2 / 7)


def test_shaping_mask():
  labels = [
    process.StepLabels((1, 0, 1)),  # a judge's: every label shapes
    process.StepLabels((1, 0, 1), confidence=(0.95, 0.3, 0.8)),
    process.StepLabels((0,), confidence=(0.1,), skipped=True),
    process.StepLabels(()),
  ]
  got = process.shaping_mask(labels, 4, min_confidence=0.8)
  np.testing.assert_array_equal(
    got, [[1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
  )
  # At 0.5 or below nothing is left out.
  every = process.shaping_mask(labels, 4, min_confidence=0.0)
  np.testing.assert_array_equal(every[1], [1, 1, 1, 0])
  with pytest.raises(ValueError, match="3 step labels but only 2"):
    process.shaping_mask(labels[:1], 2)


def test_pack_labels():
  labels = [
    process.StepLabels((1, 0, 1)),
    process.StepLabels((0,), skipped=True),
    process.StepLabels((1, 1, 0, 1, 1)),
    process.StepLabels(()),
  ]
  valid, has, proc = process.pack_labels(labels, k_pad=6)
  np.testing.assert_array_equal(
    valid,
    [
      [1, 0, 1, 0, 0, 0],
      [0, 0, 0, 0, 0, 0],
      [1, 1, 0, 1, 1, 0],
      [0, 0, 0, 0, 0, 0],
    ],
  )
  np.testing.assert_array_equal(has, [1, 0, 1, 1])
  np.testing.assert_allclose(proc, [2 / 3, 0, 0.8, 0])
  # Labels are never merged into fewer slots.
  with pytest.raises(ValueError, match="5 step labels but only 4"):
    process.pack_labels(labels, k_pad=4)


def test_pack_labels_counts_every_step():
  """R_proc of a 20-step completion is over all 20 steps."""
  lab = process.StepLabels(tuple([1] * 16 + [0] * 4))
  valid, has, proc = process.pack_labels([lab], k_pad=32)
  assert valid[0].tolist() == [1] * 16 + [0] * 4 + [0] * 12
  assert float(proc[0]) == pytest.approx(16 / 20)


def test_token_labels():
  step_id = np.array([[-1, 0, 0, 1, 2, -1], [0, -1, -1, -1, -1, -1]])
  valid = np.array([[1, 0, 1, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(
    process.token_labels(step_id, valid),
    [[0, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0]],
  )
  with pytest.raises(ValueError, match="no slot"):
    process.token_labels(step_id, valid[:, :2])
