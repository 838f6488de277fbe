"""Steps: the splitting rule and exact token spans on real tokenizers."""

import importlib

import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from stepjax.rl import steps

SPECIALS = ["<|im_end|>", "<think>", "</think>", "<answer>", "</answer>"]
CORPUS = [
  "The image is an axial CT of the chest. The left lung shows a 2.5 cm "
  "nodule! Is it malignant? 1. Modality: CT. 2. Finding: nodule.",
  "Der Befund zeigt eine Läsion im rechten Unterlappen. Größe 3 mm.",
  "肺部有结节。 右侧胸腔积液. Emoji 😀 and 🫁 lungs.",
  "Step one: look.\nStep two: compare left and right.\n\nDone.",
  "MRI brain T2 FLAIR hyperintensity, periventricular, 12 lesions.",
]

TEXTS = [
  "<think>The image is a CT. The left lung has a nodule.</think>"
  "<answer>nodule</answer><|im_end|>",
  "<think>1. Modality: MRI. 2. Finding: a lesion! Is it right-sided? Yes."
  "</think>\n<answer>right</answer>",
  # Multi-byte characters and emojis split by byte-level BPE.
  "<think>Größe 3 mm. 肺部有结节。 Emoji 😀 here. 🫁🫁 lungs ok.</think>"
  "<answer>ok</answer>",
  # Newlines, decimals, no close tag (truncated).
  "<think>\nStep 1.\nThe size is 2.5 cm.\n\n2) The edge is smooth",
  # No think tags at all: no steps.
  "The answer is left. <answer>left</answer>",
  # The prompt opened the tag: only a close tag.
  "Looking at the CT. It is axial.</think><answer>axial</answer>",
  # An answer tag inside the think region stops it.
  "<think>First. Second.<answer>x</answer> Third.</think>",
  "<think></think><answer>empty</answer>",
]


@pytest.fixture(scope="module")
def bpe():
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=400,
    special_tokens=SPECIALS,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(CORPUS * 5, trainer)
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok)


class DecodeOnly:
  """A tokenizer exposing only decode(ids): the generic incremental path."""

  def __init__(self, tok):
    self._tok = tok

  def decode(self, ids):
    return self._tok.decode(ids, clean_up_tokenization_spaces=False)


def test_split_rule_hand_example():
  text = "<think>1. Modality: MRI. 2. Finding: a lesion! Why? Yes.</think>"
  spans = steps.split_steps(text)
  got = [text[s:e] for s, e in spans]
  assert got == [
    "1. Modality: MRI.",
    "2. Finding: a lesion!",
    "Why?",
    "Yes.",
  ]
  # Decimals and "e.g" without a following space do not split; a trailing
  # sentence without punctuation is a step; thinking tag.
  t2 = "<thinking>Size 2.5 cm. Also 3.0mm e.g.x and more\n</thinking>"
  got2 = [t2[s:e] for s, e in steps.split_steps(t2, "thinking")]
  assert got2 == ["Size 2.5 cm.", "Also 3.0mm e.g.x and more"]
  assert steps.split_steps("no tags. at all.") == []
  # Stops at <answer> and at special tokens; tolerates truncation.
  t3 = "<think>A. B.<answer>C. D.</answer>"
  assert [t3[s:e] for s, e in steps.split_steps(t3)] == ["A.", "B."]
  t4 = "<think>A. B<|im_end|>"
  assert [t4[s:e] for s, e in steps.split_steps(t4)] == ["A.", "B"]
  # Consecutive list numbers merge into the next sentence.
  t5 = "<think>1. 2. Lung. 3.</think>"
  assert [t5[s:e] for s, e in steps.split_steps(t5)] == ["1. 2. Lung.", "3."]


def test_hand_token_assignment(bpe):
  text = "<think>The CT. Left lung.</think><answer>x</answer>"
  ids = bpe.encode(text, add_special_tokens=False)
  step_id, k, texts = steps.step_ids_from_tokens(ids, bpe)
  assert k == 2 and texts == ["The CT.", "Left lung."]
  pieces = [bpe.decode([i]) for i in ids]
  by_step = {
    s: "".join(p for p, si in zip(pieces, step_id) if si == s)
    for s in (-1, 0, 1)
  }
  assert by_step[0].strip() == "The CT."
  assert by_step[1].strip() == "Left lung."
  # Whitespace-only tokens between steps belong to no step.
  assert by_step[-1].replace(" ", "") == "<think></think><answer>x</answer>"


@pytest.mark.parametrize("text", TEXTS)
def test_spans_exact_against_offset_mapping(bpe, text):
  ids = bpe.encode(text, add_special_tokens=False)
  decoded, spans = steps.decode_with_spans(ids, bpe)
  assert decoded == text
  assert decoded == bpe.decode(ids, clean_up_tokenization_spaces=False)
  enc = bpe(text, add_special_tokens=False, return_offsets_mapping=True)
  assert enc["input_ids"] == ids
  np.testing.assert_array_equal(spans, np.asarray(enc["offset_mapping"]))
  step_id, k, texts = steps.step_ids_from_tokens(ids, bpe)
  _, step_id2, k2, texts2 = steps.step_ids_from_text(text, bpe)
  np.testing.assert_array_equal(step_id, step_id2)
  assert (k, texts) == (k2, texts2)
  # Every token overlapping step k has id k; steps cover their tokens.
  char_spans = steps.split_steps(text)
  for t, (a, b) in enumerate(spans):
    hits = [j for j, (s, e) in enumerate(char_spans) if a < e and b > s]
    assert step_id[t] == (hits[0] if hits else -1)
  # The generic decode-only path: same text; exact spans for ASCII, and
  # where a token ends inside a character, spans that contain the exact
  # ones (the waiting tokens share what they completed together).
  decoded3, spans3 = steps.decode_with_spans(ids, DecodeOnly(bpe))
  assert decoded3 == text
  if text.isascii():
    np.testing.assert_array_equal(spans3, spans)
  assert np.all(spans3[:, 0] <= spans[:, 0])
  assert np.all(spans3[:, 1] >= spans[:, 1])


def test_multibyte_char_split_across_tokens(bpe):
  text = "<think>Emoji 😀 here.</think>"
  ids = bpe.encode(text, add_special_tokens=False)
  decoded, spans = steps.decode_with_spans(ids, bpe)
  emoji = text.index("😀")
  covering = [t for t, (a, b) in enumerate(spans) if a <= emoji < b]
  assert len(covering) >= 2  # the emoji's 4 bytes span several tokens
  # Tokens holding only emoji bytes cover exactly the emoji; one that also
  # holds the space before it covers both.
  for t in covering:
    assert tuple(spans[t]) in {(emoji, emoji + 1), (emoji - 1, emoji + 1)}
  assert tuple(spans[covering[-1]]) == (emoji, emoji + 1)
  step_id, _, _ = steps.step_ids_from_tokens(ids, bpe)
  assert all(step_id[t] == 0 for t in covering)


def test_truncated_inside_a_character(bpe):
  text = "<think>Look 😀"
  ids = bpe.encode(text, add_special_tokens=False)
  decoded, spans = steps.decode_with_spans(ids[:-1], bpe)
  assert decoded.endswith("\ufffd")
  assert spans[-1][1] == len(decoded)
  step_id, k, texts = steps.step_ids_from_tokens(ids[:-1], bpe)
  assert k == 1 and texts[0].startswith("Look")
  assert step_id[-1] == 0


def test_batch(bpe):
  rows = [bpe.encode(t, add_special_tokens=False) for t in TEXTS[:3]]
  t = max(map(len, rows)) + 3
  ids = np.zeros((3, t), np.int32)
  for i, r in enumerate(rows):
    ids[i, : len(r)] = r
  batch = steps.batch_step_ids(ids, [len(r) for r in rows], bpe)
  assert batch.step_id_BxT.shape == (3, t)
  assert list(batch.num_steps_B) == [2, 4, 3]
  assert batch.max_steps == 4
  assert batch.step_texts[1][-2:] == ["Is it right-sided?", "Yes."]
  assert np.all(batch.step_id_BxT[:, -3:] == -1)
  assert batch.step_id_BxT.max() == 3
  assert batch.texts[0] == TEXTS[0]


def test_batch_keeps_every_step(bpe):
  """Steps are never merged: a 20-sentence completion has K = 20."""
  text = (
    "<think>"
    + " ".join(f"Step {i} holds." for i in range(20))
    + "</think><answer>ok</answer>"
  )
  ids = np.asarray([bpe.encode(text, add_special_tokens=False)], np.int32)
  batch = steps.batch_step_ids(ids, [ids.shape[1]], bpe)
  assert list(batch.num_steps_B) == [20]
  assert batch.step_texts[0][-1] == "Step 19 holds."
  assert sorted(set(batch.step_id_BxT[0].tolist()) - {-1}) == list(range(20))


def test_synthmed_tokenizer():
  try:
    tokenizer_mod = importlib.import_module("stepjax.data.tokenizer")
  except ImportError as e:
    pytest.skip(f"stepjax.data.tokenizer is not importable yet ({e})")
  tok = tokenizer_mod.load_tokenizer("")
  text = (
    "<think>The image shows a circle. It is in the left upper region. "
    "1. Its colour is bright.</think><answer>left</answer>"
  )
  try:
    ids = tok.encode(text, add_special_tokens=False)
  except TypeError:
    ids = tok.encode(text)
  step_id, k, texts = steps.step_ids_from_tokens(ids, tok)
  decoded, spans = steps.decode_with_spans(ids, tok)
  assert decoded == text
  if hasattr(tok, "backend_tokenizer"):  # an HF fast tokenizer: offsets
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    np.testing.assert_array_equal(spans, np.asarray(enc["offset_mapping"]))
  want = [decoded[s:e] for s, e in steps.split_steps(decoded)]
  assert texts == want and k == len(want) >= 2
  assert len(step_id) == len(ids)
  for s in range(k):
    toks = np.flatnonzero(step_id == s)
    assert len(toks)
    a, b = spans[toks[0]][0], spans[toks[-1]][1]
    assert texts[s] in decoded[a:b]
