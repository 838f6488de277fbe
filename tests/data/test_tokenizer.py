"""The SynthMed tokenizer, prompt layout and loading other HF tokenizers."""

import importlib.util
import json
import subprocess
import sys

import pytest
import tokenizers
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import decoders, models, pre_tokenizers, trainers

from stepjax.data import synthmed
from stepjax.data import synthmed_text as text_lib
from stepjax.data import tokenizer as tok_lib


@pytest.fixture(scope="module")
def tok():
  return tok_lib.load_tokenizer("")


def test_special_and_tag_tokens_are_single_ids(tok):
  ids = set()
  for t in tok_lib.REQUIRED_TOKENS + tok_lib.TAG_TOKENS:
    got = tok.encode(t, add_special_tokens=False)
    assert len(got) == 1, t
    assert tok.convert_ids_to_tokens(got[0]) == t
    ids.add(got[0])
  assert len(ids) == len(tok_lib.REQUIRED_TOKENS + tok_lib.TAG_TOKENS)
  info = tok_lib.tokenizer_info(tok)
  assert (
    info.pad_id
    == tok.pad_token_id
    == tok.convert_tokens_to_ids("<|endoftext|>")
  )
  assert (
    info.eos_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
  )
  assert info.image_pad_id == tok.convert_tokens_to_ids("<|image_pad|>")
  assert 1000 <= info.vocab_size <= 2000
  # Tags survive decoding without special tokens; chat tokens do not.
  ids = tok.encode("<think>a.</think><|im_end|>", add_special_tokens=False)
  assert tok.decode(ids, skip_special_tokens=True) == "<think>a.</think>"


def test_shipped_tokenizer_equals_a_rebuild(tok):
  rebuilt = tok_lib.build_synthmed_tokenizer()
  assert rebuilt.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
  assert rebuilt.get_vocab() == tok.get_vocab()


def test_shipped_tokenizer_loads_as_auto_tokenizer_does(tok):
  """load_tokenizer("") names the class the shipped config names instead
  of asking AutoTokenizer (whose imports pull in torch): same class, same
  special tokens, same ids and offsets."""
  auto = transformers.AutoTokenizer.from_pretrained(tok_lib.ASSET_DIR)
  assert type(auto) is type(tok) is transformers.PreTrainedTokenizerFast
  assert auto.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
  assert auto.special_tokens_map == tok.special_tokens_map
  text = "<|im_start|>user\n<think>The liver shows two lesions.</think>"
  a = auto(text, return_offsets_mapping=True, add_special_tokens=False)
  b = tok(text, return_offsets_mapping=True, add_special_tokens=False)
  assert a["input_ids"] == b["input_ids"]
  assert a["offset_mapping"] == b["offset_mapping"]


@pytest.mark.skipif(
  importlib.util.find_spec("torch") is None, reason="torch not installed"
)
def test_loading_the_shipped_tokenizer_imports_no_torch():
  code = (
    "import sys; from stepjax.data import tokenizer as t; "
    "t.load_tokenizer(''); print('torch' in sys.modules)"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "False"


def test_synthmed_text_is_compact(tok):
  rec = synthmed.make_record(0, 3, image_size=32)
  steps = text_lib.gold_steps(synthmed.scene_of(rec))
  ids = tok_lib.encode_completion(tok, steps, rec.answer)
  # About one token per word: the templates are in the vocabulary.
  assert len(ids) <= len(" ".join(steps).split()) * 1.6 + 12
  assert ids[-1] == tok_lib.tokenizer_info(tok).eos_id


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=80))
def test_round_trip_is_exact_for_any_text(tok, text):
  ids = tok.encode(text, add_special_tokens=False)
  assert tok.decode(ids) == text


@settings(max_examples=60, deadline=None)
@given(
  text=st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126),
    max_size=80,
  )
)
def test_offsets_are_exact(tok, text):
  enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
  pieces = [text[a:b] for a, b in enc["offset_mapping"]]
  assert "".join(pieces) == text
  for (a, b), i in zip(enc["offset_mapping"], enc["input_ids"], strict=True):
    assert tok.decode([i]) == text[a:b]


def test_offsets_with_special_tokens(tok):
  text = tok_lib.build_prompt("Which lung has a lesion?", 3) + (
    tok_lib.format_completion(["This is a CT image."], "left")
  )
  enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
  assert "".join(text[a:b] for a, b in enc["offset_mapping"]) == text


@pytest.mark.parametrize("think_tag", ["think", "thinking"])
def test_prompt_layout(tok, think_tag):
  prompt = tok_lib.build_prompt(
    "How many lesions are in the liver?", 5, think_tag
  )
  assert prompt == (
    "<|im_start|>user\n<|vision_start|>"
    + "<|image_pad|>" * 5
    + "<|vision_end|>How many lesions are in the liver?"
    + tok_lib.instruction(think_tag)
    + "<|im_end|>\n<|im_start|>assistant\n"
  )
  assert f"<{think_tag}>" in prompt and "<answer>" in prompt
  ids = tok_lib.encode_prompt(tok, "How many lesions?", 7, think_tag)
  info = tok_lib.tokenizer_info(tok)
  assert ids.count(info.image_pad_id) == 7
  assert ids[0] == info.im_start_id
  start = ids.index(info.vision_start_id)
  assert ids[start + 1 : start + 8] == [info.image_pad_id] * 7
  assert ids[start + 8] == info.vision_end_id
  assert tok.decode(ids) == tok_lib.build_prompt(
    "How many lesions?", 7, think_tag
  )
  with pytest.raises(ValueError, match="image pads"):
    tok_lib.encode_prompt(tok, "bad <|image_pad|>", 2)
  with pytest.raises(ValueError, match="think_tag"):
    tok_lib.build_prompt("q", 1, "reason")


def test_image_token_count_and_completion_format():
  assert tok_lib.num_image_tokens((1, 8, 8)) == 16
  assert tok_lib.num_image_tokens((2, 4, 6)) == 12
  assert (
    tok_lib.format_completion(["A.", "B."], "2")
    == "<think>A. B.</think><answer>2</answer>"
  )
  assert tok_lib.format_completion(["A."], "x", "thinking").startswith(
    "<thinking>A.</thinking>"
  )


def _qwen_like_dir(path, specials):
  """A tiny byte-level BPE with Qwen's chat/vision tokens, saved like HF."""
  t = tokenizers.Tokenizer(models.BPE())
  t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  t.decoder = decoders.ByteLevel()
  t.train_from_iterator(
    ["hello world lesion kidney", "the left lung"],
    trainers.BpeTrainer(
      vocab_size=300,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
    ),
  )
  t.add_special_tokens(
    [tokenizers.AddedToken(s, special=True) for s in specials]
  )
  fast = transformers.PreTrainedTokenizerFast(
    tokenizer_object=t, eos_token="<|im_end|>"
  )
  fast.save_pretrained(str(path))
  return str(path)


def test_qwen_like_tokenizer_loads_through_the_same_code(tmp_path):
  path = _qwen_like_dir(tmp_path / "qwen", list(tok_lib.REQUIRED_TOKENS))
  tok = tok_lib.load_tokenizer(path)
  assert tok.pad_token == "<|endoftext|>"  # defaulted
  info = tok_lib.tokenizer_info(tok)
  ids = tok_lib.encode_prompt(tok, "Which lung?", 4)
  assert ids.count(info.image_pad_id) == 4
  assert tok.decode(ids) == tok_lib.build_prompt("Which lung?", 4)
  # <think> is not one token here, but it still round-trips as text.
  text = tok_lib.format_completion(["The left lung."], "left")
  assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_bad_tokenizer_dirs_name_the_path(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    tok_lib.load_tokenizer(str(missing))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match=str(empty)):
    tok_lib.load_tokenizer(str(empty))
  lacking = _qwen_like_dir(tmp_path / "plain", ["<|endoftext|>", "<|im_end|>"])
  with pytest.raises(ValueError, match=r"lacks the special tokens.*image_pad"):
    tok_lib.load_tokenizer(lacking)
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "tokenizer.json").write_text("{not json")
  (broken / "tokenizer_config.json").write_text(json.dumps({}))
  with pytest.raises(ValueError, match=str(broken)):
    tok_lib.load_tokenizer(str(broken))
