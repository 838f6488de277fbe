"""Prompts from an InternVL tokenizer: `<img>` + `<IMG_CONTEXT>`*N +
`</img>` where its chat template puts `<IMG_CONTEXT>`, and the model's
image ids follow the tokenizer.

The tokenizer is the SynthMed one with InternVL's three image tokens and
their `extra_special_tokens` names (as InternVL's -hf checkpoints declare
them) and a template that renders `<IMG_CONTEXT>\\n` for an image (written
here in the shape of theirs; no checkpoint is downloaded).
"""

import json
import os

import numpy as np
import pytest
import transformers

from stepjax import config_utils
from stepjax.data import tokenizer as tokenizer_lib
from stepjax.errors import InputError
from stepjax.models import rope_index
from stepjax.train import policy

_TEMPLATE = (
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
  "{% for content in message['content'] %}"
  "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
  "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
  "{% endfor %}{{'<|im_end|>\\n'}}{% endfor %}"
  "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}"
)


def _internvl_tokenizer_dir(path, template=_TEMPLATE):
  tok = tokenizer_lib.load_tokenizer()
  tok.add_special_tokens(
    {"additional_special_tokens": ["<img>", "</img>", "<IMG_CONTEXT>"]}
  )
  tok.save_pretrained(path)
  config_path = os.path.join(path, "tokenizer_config.json")
  with open(config_path) as f:
    config = json.load(f)
  config["extra_special_tokens"] = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
  }
  config["chat_template"] = template
  with open(config_path, "w") as f:
    json.dump(config, f)
  return str(path)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  path = _internvl_tokenizer_dir(tmp_path_factory.mktemp("internvl_tok"))
  return tokenizer_lib.load_tokenizer(path)


def test_tokens_are_internvl_s(tok):
  tokens = tokenizer_lib.image_tokens(tok)
  assert (tokens.start, tokens.pad, tokens.end, tokens.wrap) == (
    "<img>",
    "<IMG_CONTEXT>",
    "</img>",
    True,
  )
  qwen = tokenizer_lib.image_tokens(tokenizer_lib.load_tokenizer())
  assert qwen == tokenizer_lib.QWEN_IMAGE_TOKENS


def test_prompt_wraps_the_context_tokens(tok):
  ids = tokenizer_lib.encode_prompt(tok, "Which organ?", 8)
  get = tok.convert_tokens_to_ids
  start, pad, end = get("<img>"), get("<IMG_CONTEXT>"), get("</img>")
  at = ids.index(start)
  assert ids[at : at + 10] == [start] + [pad] * 8 + [end]
  assert ids.count(start) == ids.count(end) == 1 and ids.count(pad) == 8
  assert get(tokenizer_lib.IMAGE_PAD) not in ids
  want = tok.apply_chat_template(
    [
      {
        "role": "user",
        "content": [
          {"type": "image"},
          {
            "type": "text",
            "text": "Which organ?" + tokenizer_lib.instruction(),
          },
        ],
      }
    ],
    add_generation_prompt=True,
    tokenize=False,
  ).replace("<IMG_CONTEXT>", "<img>" + "<IMG_CONTEXT>" * 8 + "</img>")
  assert tok.decode(ids) == want


def test_model_ids_follow_the_tokenizer(tok):
  info = tokenizer_lib.tokenizer_info(tok)
  get = tok.convert_tokens_to_ids
  assert info.image_pad_id == get("<IMG_CONTEXT>")
  assert (info.vision_start_id, info.vision_end_id) == (
    get("<img>"),
    get("</img>"),
  )
  config = config_utils.default_config()
  config.model.preset = "tiny_internvl"
  cfg = policy.model_config(config, info)
  assert cfg.image_pad_token_id == info.image_pad_id
  # Two tiles of 4x4 patches: 8 image tokens, positions 0..T-1.
  ids = np.asarray([tokenizer_lib.encode_prompt(tok, "Which organ?", 8)])
  pos, deltas = rope_index.rope_index(ids, None, np.array([[2, 4, 4]]), cfg)
  np.testing.assert_array_equal(pos[0, 0], np.arange(ids.shape[1]))
  assert deltas.tolist() == [0]


def test_template_without_the_context_token_is_refused(tmp_path):
  template = _TEMPLATE.replace("<IMG_CONTEXT>\\n", "<image>\\n")
  path = _internvl_tokenizer_dir(tmp_path, template)
  tok = transformers.AutoTokenizer.from_pretrained(path)
  with pytest.raises(InputError, match="renders 0 <IMG_CONTEXT> placeholders"):
    tokenizer_lib.prompt_builder(tok)
