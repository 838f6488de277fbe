"""Simulated judges: a counted verifier, label noise, and their wiring."""

import types

import numpy as np
import pytest

from stepjax import config_utils
from stepjax.data import synthmed
from stepjax.rl import process
from stepjax.train import components, rollout


def _requests(n, k=10):
  return [
    process.StepRequest(
      record_id=f"r{i}",
      question="q",
      reference="a",
      step_texts=tuple(f"s{j}." for j in range(k)),
      meta={"scene": {}},
    )
    for i in range(n)
  ]


class _AllValid:
  def label_steps(self, requests):
    return [
      process.StepLabels((1,) * len(r.step_texts), source="verifier")
      for r in requests
    ]


def test_noisy_source_flips_the_configured_share_reproducibly():
  noisy = process.NoisySource(_AllValid(), 0.2, seed=3)
  labels = noisy.label_steps(_requests(200))
  flipped = np.mean([1 - v for lab in labels for v in lab.labels])
  assert 0.17 < flipped < 0.23  # 2000 labels: 3 standard errors
  again = process.NoisySource(_AllValid(), 0.2, seed=3)
  assert again.label_steps(_requests(200)) == labels
  # The next call draws new flips; reseeding to call 0 repeats the first.
  assert noisy.label_steps(_requests(200)) != labels
  process.reseed(noisy, 0)
  assert noisy.label_steps(_requests(200)) == labels


def test_noisy_source_keeps_skipped_labels_and_rejects_bad_rates():
  class Skip:
    def label_steps(self, requests):
      return [process.StepLabels((), skipped=True) for _ in requests]

  out = process.NoisySource(Skip(), 0.5).label_steps(_requests(3))
  assert all(lab.skipped for lab in out)
  with pytest.raises(ValueError, match="rl.label_noise"):
    process.NoisySource(_AllValid(), 0.6)


def test_counting_source_counts_and_labels_as_judge():
  src = process.CountingSource(_AllValid())
  out = src.label_steps(_requests(3, k=4))
  assert src.completions == 3 and src.steps == 12
  assert {lab.source for lab in out} == {"judge"}


def test_hybrid_with_simulated_judge_uses_the_verifier_for_its_share():
  c = config_utils.default_config()
  c.rl.process_source = "hybrid"
  c.judge.simulate = "verifier"
  c.rl.hybrid_judge_fraction = 0.25
  src = components.process_source(c)
  assert isinstance(src, process.HybridSource)
  assert isinstance(src.judge, process.CountingSource)
  records = [synthmed.make_record(0, i) for i in range(8)]
  requests = [
    process.StepRequest(
      record_id=r.id,
      question=r.question,
      reference=r.answer,
      step_texts=tuple(synthmed.gold_steps(synthmed.scene_of(r))),
      meta=r.meta,
      value_logits=np.full(8, -5.0),  # the head says every step is invalid
    )
    for r in records
  ]
  out = src.label_steps(requests)
  assert src.judge.completions == 2 and len(src.last_judged) == 2
  for i, lab in enumerate(out):
    if i in src.last_judged:  # gold steps: the verifier accepts them all
      assert lab.source == "judge" and all(lab.labels)
    else:
      assert lab.source == "value_head" and not any(lab.labels)


def test_uncertain_hybrid_wiring_and_label_errors_against_the_verifier():
  c = config_utils.default_config()
  c.rl.process_source = "hybrid"
  c.judge.simulate = "verifier"
  c.rl.hybrid_judge_fraction = 0.25
  c.rl.hybrid_select = "uncertain"
  src = components.process_source(c)
  assert src.select == "uncertain"
  truth = components.truth_source(c)
  assert isinstance(truth, process.VerifierSource)
  records = [synthmed.make_record(0, i) for i in range(4)]
  examples = [
    {"id": r.id, "question": r.question, "answer": r.answer, "meta": r.meta}
    for r in records
  ]
  gold = [tuple(synthmed.gold_steps(synthmed.scene_of(r))) for r in records]
  # G = 2: each record's gold chain twice. The head is sure every step is
  # invalid (logit -6), except on rows 3 and 6, where it is unsure (0):
  # those two (25% of 8) go to the judge, which accepts the gold steps.
  g = 2
  logits = [np.full(len(gold[i // g]), -6.0) for i in range(8)]
  logits[3][:] = 0.0
  logits[6][:] = 0.0
  requests = [
    process.StepRequest(
      record_id=records[i // g].id,
      question="q",
      reference="a",
      step_texts=gold[i // g],
      meta=records[i // g].meta,
      value_logits=logits[i],
    )
    for i in range(8)
  ]
  labels = src.label_steps(requests)
  assert src.last_judged == [3, 6]
  scored = types.SimpleNamespace(
    step_texts=[list(gold[i // g]) for i in range(8)],
    labels=labels,
    step_shaped_BxK=None,
  )
  got = rollout.label_errors(scored, examples, g, truth)
  # Every gold step is valid; the head's 6 completions call all theirs
  # invalid, the judge's 2 call theirs valid.
  steps = [len(gold[i // g]) for i in range(8)]
  want = 1 - (steps[3] + steps[6]) / sum(steps)
  assert got["label_false_invalid_share"] == pytest.approx(want)
  assert np.isnan(got["label_false_valid_share"])
  # No yardstick where the labels are the verifier's own.
  c.rl.process_source = "verifier"
  assert components.truth_source(c) is None


def test_label_noise_wraps_the_verifier():
  c = config_utils.default_config()
  c.rl.label_noise = 0.1
  src = components.process_source(c)
  assert isinstance(src, process.NoisySource)
  assert isinstance(src.inner, process.VerifierSource)


def test_zero_std_group_share():
  values = np.array([1.0, 1.0, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0])
  assert rollout._flat_group_share(values, 4) == 0.5
  assert rollout._flat_group_share(values, 2) == 0.75
