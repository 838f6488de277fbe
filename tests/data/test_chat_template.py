"""Prompts from a checkpoint's chat template, and all of its stop ids.

The tokenizer directory is built here in an HF checkpoint's layout: a tiny
byte-level BPE with Qwen2.5-VL's special tokens, a chat template in
Qwen2.5-VL's layout (default system message, one
<|vision_start|><|image_pad|><|vision_end|> per image) and a
generation_config.json listing two eos ids.
"""

import json

import ml_collections
import numpy as np
import pytest
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from stepjax.data import pipeline, synthmed
from stepjax.data import tokenizer as tok_lib
from stepjax.errors import InputError, UserError
from stepjax.train import components

SPECIALS = (
  "<|endoftext|>",
  "<|im_start|>",
  "<|im_end|>",
  "<|vision_start|>",
  "<|vision_end|>",
  "<|image_pad|>",
  "<|video_pad|>",
)
SYSTEM = "You are a helpful assistant."
# Qwen2.5-VL's layout: a system turn unless the first message is one, each
# turn <|im_start|>role\n...<|im_end|>\n, an image as one vision run.
TEMPLATE = (
  "{% for m in messages %}"
  "{% if loop.first and m['role'] != 'system' %}"
  "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n"
  "{% endif %}"
  "<|im_start|>{{ m['role'] }}\n"
  "{% if m['content'] is string %}{{ m['content'] }}"
  "{% else %}{% for part in m['content'] %}"
  "{% if part['type'] == 'image' %}"
  "<|vision_start|><|image_pad|><|vision_end|>"
  "{% elif part['type'] == 'text' %}{{ part['text'] }}"
  "{% endif %}{% endfor %}{% endif %}"
  "<|im_end|>\n"
  "{% endfor %}"
  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTION = "Which organ has a lesion?"


def _write_dir(path, template=TEMPLATE, generation=None):
  """Saves the tiny tokenizer (with `template`) and, unless `generation`
  is "", a generation_config.json (default: eos ids [im_end, endoftext])."""
  t = tokenizers.Tokenizer(models.BPE())
  t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  t.decoder = decoders.ByteLevel()
  t.train_from_iterator(
    [SYSTEM, QUESTION, tok_lib.instruction("think"), "user assistant"],
    trainers.BpeTrainer(
      vocab_size=320,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
    ),
  )
  t.add_special_tokens(
    [tokenizers.AddedToken(s, special=True, normalized=False) for s in SPECIALS]
  )
  fast = transformers.PreTrainedTokenizerFast(
    tokenizer_object=t, eos_token="<|im_end|>", pad_token="<|endoftext|>"
  )
  fast.chat_template = template
  fast.save_pretrained(str(path))
  if generation is None:
    ids = fast.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    generation = json.dumps({"eos_token_id": ids})
  if generation:
    (path / "generation_config.json").write_text(generation)
  return str(path)


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
  return _write_dir(tmp_path_factory.mktemp("qwen_chat"))


@pytest.fixture(scope="module")
def chat_tok(chat_dir):
  return tok_lib.load_tokenizer(chat_dir)


def _template_ids(tok, text, n):
  """apply_chat_template's ids, its one image pad repeated n times."""
  messages = [
    {
      "role": "user",
      "content": [{"type": "image"}, {"type": "text", "text": text}],
    }
  ]
  ids = tok.apply_chat_template(
    messages, add_generation_prompt=True, tokenize=True, return_dict=False
  )
  pad = tok.convert_tokens_to_ids("<|image_pad|>")
  assert ids.count(pad) == 1
  at = ids.index(pad)
  return ids[:at] + [pad] * n + ids[at + 1 :]


@pytest.mark.parametrize("n", [1, 6])
@pytest.mark.parametrize("think_tag", ["think", "thinking"])
def test_prompt_ids_equal_apply_chat_template(chat_tok, n, think_tag):
  prompt_fn = tok_lib.prompt_builder(chat_tok, think_tag)
  text = prompt_fn(QUESTION, n)
  assert text == (
    f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
    f"<|vision_start|>{'<|image_pad|>' * n}<|vision_end|>{QUESTION}"
    f"{tok_lib.instruction(think_tag)}<|im_end|>\n<|im_start|>assistant\n"
  )
  ours = chat_tok.encode(text, add_special_tokens=False)
  want = _template_ids(chat_tok, QUESTION + tok_lib.instruction(think_tag), n)
  assert ours == want
  assert tok_lib.encode_prompt(chat_tok, QUESTION, n, think_tag) == want


def test_several_images_render_one_item_each(chat_tok):
  """Two images: the template gets two image items before the text (as
  TRL lays out a multi-image prompt); the k-th placeholder gets the k-th
  image's pads. The built-in layout puts the runs in the same place."""
  text = tok_lib.prompt_builder(chat_tok)(QUESTION, (2, 5))
  runs = "".join(
    f"<|vision_start|>{'<|image_pad|>' * n}<|vision_end|>" for n in (2, 5)
  )
  assert text == (
    f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
    f"{runs}{QUESTION}{tok_lib.instruction('think')}<|im_end|>\n"
    "<|im_start|>assistant\n"
  )
  messages = [
    {
      "role": "user",
      "content": [
        {"type": "image"},
        {"type": "image"},
        {"type": "text", "text": QUESTION + tok_lib.instruction("think")},
      ],
    }
  ]
  rendered = chat_tok.apply_chat_template(
    messages, add_generation_prompt=True, tokenize=False
  )
  one = "<|vision_start|><|image_pad|><|vision_end|>"
  assert rendered.replace(one * 2, runs) == text
  ids = tok_lib.encode_prompt(chat_tok, QUESTION, [2, 5])
  assert ids.count(chat_tok.convert_tokens_to_ids("<|image_pad|>")) == 7
  builtin = tok_lib.build_prompt(QUESTION, [2, 5])
  assert builtin.startswith(f"<|im_start|>user\n{runs}{QUESTION}")


@pytest.mark.parametrize("think_tag", ["think", "thinking"])
def test_builtin_tokenizer_prompt_is_unchanged(think_tag):
  tok = tok_lib.load_tokenizer("")
  assert not tok.chat_template
  old = (
    "<|im_start|>user\n<|vision_start|>"
    + "<|image_pad|>" * 5
    + "<|vision_end|>How many lesions are in the liver?"
    + tok_lib.instruction(think_tag)
    + "<|im_end|>\n<|im_start|>assistant\n"
  )
  prompt_fn = tok_lib.prompt_builder(tok, think_tag)
  assert prompt_fn("How many lesions are in the liver?", 5) == old


@pytest.mark.parametrize("builtin", [True, False])
def test_pipeline_prompts_come_from_the_builder(chat_tok, builtin):
  tok = tok_lib.load_tokenizer("") if builtin else chat_tok
  source = synthmed.SynthMedSource(2, seed=0, image_size=56)
  opts = pipeline.PipelineOptions(
    batch_size=2,
    token_buckets=(256,),
    patch_buckets=(64,),
    shuffle=False,
    read_threads=0,
  )
  batch = next(
    iter(pipeline.make_dataset(source, tok, opts, shard_index=0, shard_count=1))
  )
  prompt_fn = tok_lib.prompt_builder(tok)
  for i, question in enumerate(batch["questions"]):
    n = int(np.prod(batch["grid_thw_Ix3"][i])) // 4
    mask = batch["prompt_mask_BxT"][i].astype(bool)
    got = batch["prompt_ids_BxT"][i][mask].tolist()
    want = tok.encode(prompt_fn(question, n), add_special_tokens=False)
    assert got == want
    has_system = tok.encode(SYSTEM, add_special_tokens=False)[0] in got
    assert has_system == (not builtin)


def test_stop_ids_come_from_generation_config(chat_tok, chat_dir, tmp_path):
  im_end, eot = chat_tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
  info = tok_lib.tokenizer_info(chat_tok, chat_dir)
  assert info.stop_ids == (im_end, eot)
  assert info.eos_id == im_end  # SFT targets still end with <|im_end|>
  assert tok_lib.tokenizer_info(chat_tok).stop_ids == (im_end,)
  config = ml_collections.ConfigDict(
    {"init_from": "", "tokenizer": {"path": chat_dir}}
  )
  _, loaded = components.load_tokenizer(config)
  assert loaded.stop_ids == (im_end, eot)
  one = _write_dir(
    tmp_path / "int", generation=json.dumps({"eos_token_id": eot})
  )
  assert tok_lib.tokenizer_info(chat_tok, one).stop_ids == (im_end, eot)
  none = _write_dir(tmp_path / "none", generation="")
  assert tok_lib.tokenizer_info(chat_tok, none).stop_ids == (im_end,)
  builtin = tok_lib.tokenizer_info(tok_lib.load_tokenizer(""))
  assert builtin.stop_ids == (builtin.eos_id,)


@pytest.mark.parametrize(
  "generation, match",
  [
    ("{not json", "not valid JSON"),
    (json.dumps({"eos_token_id": "eos"}), "not token ids"),
    (json.dumps({"eos_token_id": [2, 10**9]}), "not token ids"),
  ],
)
def test_bad_generation_config_is_one_clear_line(tmp_path, generation, match):
  path = _write_dir(tmp_path / "bad", generation=generation)
  tok = tok_lib.load_tokenizer(path)
  with pytest.raises(InputError, match=match) as e:
    tok_lib.tokenizer_info(tok, path)
  assert "generation_config.json" in str(e.value)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize(
  "template, match",
  [
    (TEMPLATE.replace("<|image_pad|>", ""), "renders 0 <|image_pad|>"),
    (TEMPLATE.replace("<|image_pad|>", "<|image_pad|>" * 2), "renders 2"),
    ("{% for m in messages %}{{ m['role'] }", "does not render"),
  ],
)
def test_bad_chat_template_is_one_clear_line(tmp_path, template, match):
  path = _write_dir(tmp_path / "bad", template=template)
  tok = tok_lib.load_tokenizer(path)
  with pytest.raises(UserError, match=match) as e:
    tok_lib.prompt_builder(tok)
  assert path in str(e.value)
  assert "\n" not in str(e.value)
