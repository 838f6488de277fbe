"""Rewards: extraction, normalisation, ROUGE/BLEU mix, R_len (BERTScore:
test_rl_bertscore.py)."""

import logging
import math

import numpy as np
import pytest

from stepjax.rl import rewards


def test_extract_answer():
  assert rewards.extract_answer("<think>x</think><ANSWER> Left\n</answer>") == (
    "Left"
  )
  assert rewards.extract_answer("a<answer>1</answer><answer>2</answer>") == "1"
  assert rewards.extract_answer("  no tags  ") == "no tags"


@pytest.mark.parametrize(
  "a,r",
  [
    ("The Left  Lung.", "left lung"),
    ("two", "2"),
    ("2.0", "two"),
    ("an axial CT!", "Axial, CT"),
    ("3.5 cm", "3.5 CM"),
  ],
)
def test_matches(a, r):
  assert rewards.answers_match(a, r)


def test_no_false_matches():
  assert not rewards.answers_match("35", "3.5")
  assert not rewards.answers_match("left", "right")


def test_answer_reward_hand_examples(caplog):
  rewards._warned_no_encoder = False
  with caplog.at_level(logging.WARNING):
    r = rewards.answer_rewards(
      [
        "<answer>The left lung</answer>",
        "<answer>left upper lobe</answer>",
        "<answer>upper lobe</answer>",
        "<answer></answer>",
      ],
      ["left lung", "right upper lobe", "right upper lobe", "x"],
    )
    rewards.answer_rewards(["a"], ["b"])
  assert r[0] == 1.0
  # 2 of 3 words: ROUGE-1 F1 2/3, BLEU-1 2/3 (same length, no brevity).
  assert r[1] == pytest.approx(2 / 3, rel=1e-6)
  # ROUGE-1: P 1, R 2/3 -> 0.8; BLEU-1: 1 * exp(1 - 3/2).
  assert r[2] == pytest.approx(0.5 * 0.8 + 0.5 * math.exp(-0.5), rel=1e-6)
  assert r[3] == 0.0
  warnings = [m for m in caplog.messages if "BERTScore" in m]
  assert len(warnings) == 1  # once per process


def test_length_reward():
  got = rewards.length_reward([0, 2, 4, 7, 10, 12, 20])
  np.testing.assert_allclose(got, [-1.0, -0.5, 0, 0, 0, -0.2, -1.0])
  np.testing.assert_allclose(rewards.length_reward([1], k_min=2), [-0.5])


@pytest.mark.parametrize(
  "text,want",
  [
    ("<think>a. b.</think><answer>x</answer>", 1.0),
    ("<think>a</think>\n<answer>x</answer><|im_end|>", 1.0),
    ("<think>a</think>", 0.0),
    ("<answer>x</answer>", 0.0),
    ("<think>a<think>b</think><answer>x</answer>", 0.0),
    ("<think>a</think><answer>x</answer> trailing", 0.0),
  ],
)
def test_format_reward(text, want):
  assert rewards.format_reward(text) == want


def test_format_reward_thinking_tag():
  text = "<thinking>a</thinking><answer>x</answer>"
  assert rewards.format_reward(text, "thinking") == 1.0
  assert rewards.format_reward(text, "think") == 0.0


def test_compute_rewards():
  out = rewards.compute_rewards(
    ["<think>a.</think><answer>left</answer>", "<answer>right</answer>"],
    ["left", "left"],
    num_steps=[4, 1],
    step_labels=[[1, 0, 1, 1], None],
    format_weight=0.5,
  )
  c = out.components
  np.testing.assert_allclose(c["answer"], [1.0, 0.0])
  np.testing.assert_allclose(c["process"], [0.75, 0.0])
  np.testing.assert_allclose(c["length"], [0.0, -0.75])
  np.testing.assert_allclose(c["format"], [1.0, 0.0])
  np.testing.assert_allclose(out.total, [1.0 + 0.75 + 0.5, -0.75])
  np.testing.assert_array_equal(out.has_labels, [True, False])
  r, w = out.matrix()
  assert r.shape == (2, 4) and list(w) == [1.0, 1.0, 1.0, 0.5]
  np.testing.assert_allclose(r @ w, out.total)
  with pytest.raises(ValueError, match="one of each"):
    rewards.compute_rewards(["a"], ["b", "c"], [1])
