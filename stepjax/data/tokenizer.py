"""Tokenizers: the shipped SynthMed byte-level BPE, or any HF tokenizer dir.

The SynthMed tokenizer is a real Hugging Face fast tokenizer built locally
with the `tokenizers` library: byte-level BPE (so decode(encode(text)) is
exact and offsets are exact, also for text a model invents) trained on
SynthMed questions, gold and corrupted rationales, answers and the prompt
instruction, with Qwen2.5-VL's special tokens. It is shipped in
assets/synthmed_tokenizer/ so ids are fixed across runs;
`build_synthmed_tokenizer()` rebuilds it deterministically.

Prompts (`prompt_builder`): a tokenizer with a chat template (an HF
checkpoint's own) renders one user turn [image, question + instruction]
with it, as the checkpoint was tuned on (Qwen2.5-VL's adds its default
system message), and its one `<|image_pad|>` becomes N pads, as
transformers' Qwen2.5-VL processor expands it. The SynthMed tokenizer has
no template; its prompt is Qwen2.5-VL's layout without a system message:
  <|im_start|>user\\n<|vision_start|><|image_pad|>*N<|vision_end|>
  {question}{instruction}<|im_end|>\\n<|im_start|>assistant\\n
where N = grid_t * grid_h * grid_w // 4 (one pad per merged 2x2 patch).
Several images (a list of pad counts, one per image): the user turn's
content starts with one image item per image, in order, then the text (as
TRL lays out a multi-image prompt); each renders its own
`<|vision_start|><|image_pad|><|vision_end|>` run before the question,
and the k-th run's pad becomes the k-th image's N_k pads.

InternVL's tokenizers (those with a `context_image_token`, as InternVL's
`-hf` checkpoints define `<img>`, `<IMG_CONTEXT>` and `</img>`) use those
tokens instead (`ImageTokens`): the template's one `<IMG_CONTEXT>` becomes
`<img>` + `<IMG_CONTEXT>`*N + `</img>`, as transformers' InternVL
processor expands it, and the model's image, start and end ids follow.

Stop ids (`TokenizerInfo.stop_ids`): <|im_end|> plus every `eos_token_id`
of the model directory's generation_config.json (Qwen checkpoints list
<|im_end|> and <|endoftext|>).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence

import jinja2
import numpy as np
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from stepjax.data import synthmed_corrupt as corrupt_lib
from stepjax.data import synthmed_scene as scene_lib
from stepjax.data import synthmed_text as text_lib
from stepjax.errors import InputError, MissingInputError

_ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
ASSET_DIR = os.path.join(_ASSETS, "synthmed_tokenizer")
_WORDS_FILE = os.path.join(_ASSETS, "tokenizer_words.txt")

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # eos
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
# Tokens every tokenizer must have as single ids (Qwen2.5-VL has them all).
REQUIRED_TOKENS = (PAD, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD)
# Reasoning tags: single ids in the SynthMed tokenizer, plain text in
# tokenizers that lack them (e.g. Qwen2.5-VL).
TAG_TOKENS = (
  "<think>",
  "</think>",
  "<answer>",
  "</answer>",
  "<thinking>",
  "</thinking>",
)
THINK_TAGS = ("think", "thinking")
SPATIAL_MERGE = 2  # Qwen2.5-VL merges 2x2 patches into one image token
GENERATION_CONFIG = "generation_config.json"

# (question, num_image_tokens) -> text; num_image_tokens is an int (one
# image) or a sequence of ints (one per image, in prompt order).
PromptFn = Callable[[str, int | Sequence[int]], str]

_VOCAB_SIZE = 1536  # BPE trainer target before the added tokens
_CORPUS_SEED = 20240601
_CORPUS_SCENES = 1500
# Qwen-style pre-tokenization: words with their leading space, single
# digits, punctuation runs, newlines.
_SPLIT_PATTERN = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclasses.dataclass(frozen=True)
class ImageTokens:
  """The image placeholder tokens of a tokenizer's prompts.

  Qwen (the default): a chat template renders start + pad + end for an
  image and the pad is repeated N times. `wrap` (InternVL): the template
  renders the pad alone, which becomes start + pad * N + end.
  """

  start: str = VISION_START
  pad: str = IMAGE_PAD
  end: str = VISION_END
  wrap: bool = False

  def expand(self, num_image_tokens: int) -> str:
    """What the template's one pad becomes."""
    pads = self.pad * num_image_tokens
    return f"{self.start}{pads}{self.end}" if self.wrap else pads


QWEN_IMAGE_TOKENS = ImageTokens()


def image_tokens(tok: transformers.PreTrainedTokenizerFast) -> ImageTokens:
  """InternVL's tokens when `tok` names a `context_image_token`, else
  Qwen's."""
  context = getattr(tok, "context_image_token", None)
  if not context:
    return QWEN_IMAGE_TOKENS
  return ImageTokens(
    start=getattr(tok, "start_image_token", None) or "<img>",
    pad=context,
    end=getattr(tok, "end_image_token", None) or "</img>",
    wrap=True,
  )


def instruction(think_tag: str = "think") -> str:
  """The instruction appended to every question (tag: think | thinking)."""
  if think_tag not in THINK_TAGS:
    raise InputError(
      f"tokenizer.think_tag must be one of {THINK_TAGS}; got {think_tag!r}"
    )
  return (
    f" Think step by step inside <{think_tag}> </{think_tag}> tags, one "
    "short sentence per step, then give the final answer inside <answer> "
    "</answer> tags."
  )


def image_token_counts(num_image_tokens: int | Sequence[int]) -> tuple:
  """Pad tokens per image: an int is one image, a sequence one per image."""
  counts = (
    (num_image_tokens,)
    if isinstance(num_image_tokens, (int, np.integer))
    else tuple(num_image_tokens)
  )
  if not counts or any(int(n) < 0 for n in counts):
    raise ValueError(
      f"num_image_tokens must be >= 0 per image; got {num_image_tokens}"
    )
  return tuple(int(n) for n in counts)


def build_prompt(
  question: str,
  num_image_tokens: int | Sequence[int],
  think_tag: str = "think",
  tokens: ImageTokens = QWEN_IMAGE_TOKENS,
) -> str:
  """The chat-formatted prompt text for one question and its image(s):
  one start + pads + end run per image, in order, before the question."""
  runs = "".join(
    f"{tokens.start}{tokens.pad * n}{tokens.end}"
    for n in image_token_counts(num_image_tokens)
  )
  return (
    f"{IM_START}user\n{runs}{question}{instruction(think_tag)}{IM_END}\n"
    f"{IM_START}assistant\n"
  )


def prompt_builder(
  tok: transformers.PreTrainedTokenizerFast, think_tag: str = "think"
) -> PromptFn:
  """The (question, num_image_tokens) -> prompt text function for `tok`.

  The one place that decides the prompt layout, for the pipeline, the
  trainer, eval and `stepjax generate`: `ChatPrompt` when `tok` has a chat
  template (checked now by rendering one prompt), else `build_prompt`.
  """
  instruction(think_tag)  # a bad tag fails here, not in a data worker
  prompt = _prompt_fn(tok, think_tag)
  if isinstance(prompt, ChatPrompt):
    prompt("Which organ is shown?", 1)  # a bad template fails here too
  return prompt


def _prompt_fn(
  tok: transformers.PreTrainedTokenizerFast, think_tag: str
) -> PromptFn:
  """`prompt_builder`'s choice, without its up-front check."""
  if not getattr(tok, "chat_template", None):
    return functools.partial(
      build_prompt, think_tag=think_tag, tokens=image_tokens(tok)
    )
  return ChatPrompt(tok, think_tag)


class ChatPrompt:
  """Prompt text from the tokenizer's own chat template.

  One user turn whose content is [image, ..., text = question +
  instruction] (the MRPO reference layout; one image item per image), with
  the generation prompt; the template's k-th image pad is then expanded to
  the k-th image's N pads (`ImageTokens.expand`), as transformers'
  Qwen2.5-VL or InternVL processor expands it. Picklable, for Grain's data
  workers.
  """

  def __init__(self, tok: transformers.PreTrainedTokenizerFast, think_tag: str):
    self.tok = tok
    self.think_tag = think_tag
    self.tokens = image_tokens(tok)

  def __call__(
    self, question: str, num_image_tokens: int | Sequence[int]
  ) -> str:
    counts = image_token_counts(num_image_tokens)
    text = question + instruction(self.think_tag)
    rendered = self._render(text, len(counts))
    pad = self.tokens.pad
    found = rendered.count(pad) - text.count(pad)
    if found != len(counts):
      layout = pad if self.tokens.wrap else f"{VISION_START}{pad}{VISION_END}"
      raise InputError(
        f"the chat template of the tokenizer in {self._where()} renders "
        f"{found} {pad} placeholders for {len(counts)} image(s); it needs "
        f"one per image ({layout} for each content item of type 'image')"
      )
    # The image items come before the text: the first placeholders are
    # theirs, in order.
    pieces, rest = [], rendered
    for n in counts:
      head, _, rest = rest.partition(pad)
      pieces += [head, self.tokens.expand(n)]
    return "".join(pieces) + rest

  def _render(self, text: str, num_images: int = 1) -> str:
    content = [{"type": "image"}] * num_images
    messages = [
      {
        "role": "user",
        "content": [*content, {"type": "text", "text": text}],
      }
    ]
    try:
      rendered = self.tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
      )
    except (jinja2.TemplateError, ValueError, TypeError, KeyError) as e:
      raise InputError(
        f"the chat template of the tokenizer in {self._where()} does not "
        f"render a user turn with an image and text: {e}"
      ) from e
    if not isinstance(rendered, str):
      raise InputError(
        f"the chat template of the tokenizer in {self._where()} rendered "
        f"{type(rendered).__name__}, not text"
      )
    return rendered

  def _where(self) -> str:
    return getattr(self.tok, "name_or_path", "") or "(unnamed)"


def num_image_tokens(grid_thw: tuple[int, int, int]) -> int:
  """Image pad tokens for a (t, h, w) patch grid: t * h * w // 4."""
  t, h, w = (int(v) for v in grid_thw)
  return t * h * w // (SPATIAL_MERGE * SPATIAL_MERGE)


def format_completion(
  steps: list[str], answer: str, think_tag: str = "think"
) -> str:
  """The SFT target text: <think>s1 s2 ...</think><answer>a</answer>."""
  if think_tag not in THINK_TAGS:
    raise InputError(
      f"tokenizer.think_tag must be one of {THINK_TAGS}; got {think_tag!r}"
    )
  body = " ".join(s.strip() for s in steps)
  return f"<{think_tag}>{body}</{think_tag}><answer>{answer}</answer>"


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
  """The ids the model, sampler and batcher need."""

  pad_id: int
  eos_id: int
  im_start_id: int
  image_pad_id: int
  vision_start_id: int
  vision_end_id: int
  vocab_size: int  # len(tokenizer): base vocab plus added tokens
  # Ids that end a completion: eos_id first, then the model directory's
  # generation_config.json eos ids. eos_id stays the one id that SFT
  # targets end with.
  stop_ids: tuple[int, ...]


def tokenizer_info(
  tok: transformers.PreTrainedTokenizerFast, model_dir: str = ""
) -> TokenizerInfo:
  """The special ids of `tok`; stop ids also from `model_dir`'s
  generation_config.json when it has one ("" or no file: <|im_end|> only).
  """
  ids = {t: _single_id(tok, t) for t in REQUIRED_TOKENS}
  image = image_tokens(tok)
  extra = generation_stop_ids(model_dir, len(tok))
  return TokenizerInfo(
    pad_id=ids[PAD],
    eos_id=ids[IM_END],
    im_start_id=ids[IM_START],
    image_pad_id=_single_id(tok, image.pad),
    vision_start_id=_single_id(tok, image.start),
    vision_end_id=_single_id(tok, image.end),
    vocab_size=len(tok),
    stop_ids=tuple(dict.fromkeys((ids[IM_END], *extra))),
  )


def generation_stop_ids(model_dir: str, vocab_size: int) -> tuple[int, ...]:
  """`eos_token_id` (an int or a list of ints) of
  model_dir/generation_config.json; () without the file or the key.

  Raises InputError naming the file when it is not JSON or an id is not
  one of the tokenizer's `vocab_size` ids.
  """
  path = os.path.join(model_dir, GENERATION_CONFIG) if model_dir else ""
  if not path or not os.path.isfile(path):
    return ()
  try:
    with open(path) as f:
      config = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(
      f"{path} is not valid JSON ({e}); fix or delete it (without it only "
      f"{IM_END} stops a completion)"
    ) from e
  value = config.get("eos_token_id") if isinstance(config, dict) else None
  value = [] if value is None else value
  ids = value if isinstance(value, list) else [value]
  bad = [
    i
    for i in ids
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size
  ]
  if bad:
    raise InputError(
      f"{path}: eos_token_id {value!r} holds {bad}, not token ids of the "
      f"tokenizer (0 .. {vocab_size - 1}); give an id or a list of ids"
    )
  return tuple(ids)


def _single_id(tok: transformers.PreTrainedTokenizerFast, token: str) -> int:
  ids = tok.encode(token, add_special_tokens=False)
  if len(ids) != 1:
    raise ValueError(f"token {token!r} is not a single id (got {ids})")
  return ids[0]


def encode_prompt(
  tok: transformers.PreTrainedTokenizerFast,
  question: str,
  num_image_tokens: int | Sequence[int],
  think_tag: str = "think",
) -> list[int]:
  """Token ids of the prompt `prompt_builder(tok)` lays out (one image, or
  a sequence of pad counts for several); checks the image pad count. (The
  prompt's own rendering checks the template, so no probe prompt is
  rendered first.)"""
  ids = tok.encode(
    _prompt_fn(tok, think_tag)(question, num_image_tokens),
    add_special_tokens=False,
  )
  pad = image_tokens(tok).pad
  pad_id = _single_id(tok, pad)
  found = sum(1 for i in ids if i == pad_id)
  want = sum(image_token_counts(num_image_tokens))
  if found != want:
    raise ValueError(
      f"prompt for question {question[:60]!r} has {found} image pads, "
      f"expected {want}; does the question contain {pad!r}?"
    )
  return ids


def encode_completion(
  tok: transformers.PreTrainedTokenizerFast,
  steps: list[str],
  answer: str,
  think_tag: str = "think",
) -> list[int]:
  """SFT target ids: format_completion(...) followed by the eos token."""
  ids = tok.encode(
    format_completion(steps, answer, think_tag), add_special_tokens=False
  )
  return ids + [_single_id(tok, IM_END)]


def load_tokenizer(path: str = "") -> transformers.PreTrainedTokenizerFast:
  """The shipped SynthMed tokenizer ("") or the HF tokenizer in `path`.

  Any tokenizer directory with the Qwen2.5-VL special tokens works (a real
  Qwen2.5-VL checkpoint goes through the same code). The pad token defaults
  to <|endoftext|> when the directory sets none.
  """
  where = path or ASSET_DIR
  flag = "tokenizer.path" if path else "the shipped SynthMed tokenizer"
  if not os.path.isdir(where):
    raise MissingInputError(
      f"tokenizer directory {where} ({flag}) does not exist; set "
      "tokenizer.path to an HF tokenizer directory or '' for SynthMed"
    )
  # The shipped tokenizer's config names PreTrainedTokenizerFast, the class
  # AutoTokenizer would pick; naming it skips AutoTokenizer's imports of
  # the model configs (and of torch where installed: ~3 s per process).
  cls = (
    transformers.AutoTokenizer if path else transformers.PreTrainedTokenizerFast
  )
  try:
    tok = cls.from_pretrained(where)
  except (OSError, ValueError, TypeError) as e:
    raise InputError(
      f"cannot load an HF tokenizer from {where} ({flag}): {e}"
    ) from e
  if not getattr(tok, "is_fast", False):
    raise InputError(
      f"tokenizer in {where} ({flag}) is not a fast tokenizer; stepjax "
      "needs tokenizer.json (offsets are used to map steps to tokens)"
    )
  image = image_tokens(tok)
  needed = REQUIRED_TOKENS + (image.start, image.pad, image.end)
  missing = [t for t in dict.fromkeys(needed) if not _is_single(tok, t)]
  if missing:
    raise InputError(
      f"tokenizer in {where} ({flag}) lacks the special tokens {missing} "
      "as single ids; stepjax needs the Qwen2.5-VL chat and vision tokens "
      "(and an InternVL tokenizer's image tokens)"
    )
  if tok.pad_token is None:
    tok.pad_token = PAD
  return tok


def _is_single(tok: transformers.PreTrainedTokenizerFast, token: str) -> bool:
  try:
    _single_id(tok, token)
  except ValueError:
    return False
  return tok.convert_ids_to_tokens(_single_id(tok, token)) == token


# ---------------------------------------------------------------- building


def training_corpus() -> list[str]:
  """The text the SynthMed BPE is trained on, in a fixed order."""
  lines = [instruction(tag) for tag in THINK_TAGS]
  lines += ["user\n", "assistant\n", "system\n", "0 1 2 3 4 5 6 7 8 9"]
  with open(_WORDS_FILE) as f:
    words = [line.strip() for line in f if not line.startswith("#")]
  # Twice, with and without capitals, so each word's pieces recur.
  lines += words + [w.capitalize() for w in words]
  rng = np.random.default_rng(_CORPUS_SEED)
  for _ in range(_CORPUS_SCENES):
    scene = scene_lib.sample_scene(rng, float(rng.uniform()))
    steps = text_lib.gold_steps(scene)
    answer = scene_lib.answer(scene)
    lines.append(text_lib.question_text(scene))
    lines.append(" ".join(steps))
    lines.append(answer)
    cascade = corrupt_lib.make_cascade(scene, rng)
    if cascade is not None:
      lines.append(" ".join(cascade.steps))
    for kind in corrupt_lib.CORRUPTIONS:
      for step in steps:
        wrong = corrupt_lib.corrupt_step(step, scene, kind, rng)
        if wrong is not None:
          lines.append(wrong)
  return lines


def build_synthmed_tokenizer() -> transformers.PreTrainedTokenizerFast:
  """Trains the SynthMed byte-level BPE from scratch (deterministic)."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.Split(
        tokenizers.Regex(_SPLIT_PATTERN), behavior="isolated"
      ),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
  )
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(
    vocab_size=_VOCAB_SIZE,
    min_frequency=2,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(training_corpus(), trainer=trainer)
  tok.add_special_tokens(
    [
      tokenizers.AddedToken(t, special=True, normalized=False)
      for t in REQUIRED_TOKENS
    ]
  )
  tok.add_tokens(
    [
      tokenizers.AddedToken(t, special=False, normalized=False)
      for t in TAG_TOKENS
    ]
  )
  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok,
    pad_token=PAD,
    eos_token=IM_END,
    model_max_length=32768,
    clean_up_tokenization_spaces=False,
  )


def write_synthmed_tokenizer(out_dir: str = ASSET_DIR) -> str:
  """Rebuilds the tokenizer and saves it (save_pretrained) to out_dir."""
  build_synthmed_tokenizer().save_pretrained(out_dir)
  # transformers 5 names its own backend class here; the generic name also
  # loads with transformers 4.
  config_path = os.path.join(out_dir, "tokenizer_config.json")
  with open(config_path) as f:
    config = json.load(f)
  config["tokenizer_class"] = "PreTrainedTokenizerFast"
  with open(config_path, "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
  return out_dir


if __name__ == "__main__":
  print(f"wrote {write_synthmed_tokenizer()}")
