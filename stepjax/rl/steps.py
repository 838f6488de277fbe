"""Reasoning steps of a completion, as character and token spans.

Steps are the sentences of the text inside the think tags (spec, "Steps"):
the region after `<think>` up to `</think>`, an `<answer>` tag, a
`<|...|>` special token or the end of the text (truncation); split after
`.`, `!` or `?` followed by whitespace; a fragment that is only a list
number ("1.", "2)") is merged with the sentence after it.

In the RL loop the completion is a list of sampled token ids; the text is
their decoding, and every token gets the exact character range it
produced (byte-level BPE tokens that hold part of a multi-byte character
all cover that character). A token overlapping a step's span belongs to it
(to the first one if it overlaps two).

Host-side numpy. Shapes: B completions, T completion tokens, K steps of a
completion (its true count: steps are never merged or dropped).
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

_SENTENCE_END = re.compile(r"[.!?](?=\s)")
_LIST_NUMBER = re.compile(r"\(?\d{1,3}[.)]")
_SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>")
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)


def think_region(text: str, think_tag: str = "think") -> tuple[int, int] | None:
  """Character range [start, end) of the reasoning inside the think tags.

  Without an opening tag but with a closing one (the prompt opened it), the
  region starts at 0. Without either tag there is no region (None).
  """
  tag = re.escape(think_tag)
  open_m = re.search(rf"<{tag}>", text, re.IGNORECASE)
  close_re = re.compile(rf"</{tag}>", re.IGNORECASE)
  if open_m is not None:
    start = open_m.end()
  elif close_re.search(text):
    start = 0
  else:
    return None
  end = len(text)
  for pattern in (close_re, _ANSWER_OPEN, _SPECIAL):
    m = pattern.search(text, start)
    if m is not None:
      end = min(end, m.start())
  return start, end


def split_steps(text: str, think_tag: str = "think") -> list[tuple[int, int]]:
  """Character spans [start, end) of the steps, into `text`, in order.

  Spans exclude surrounding whitespace; empty fragments are dropped.
  """
  region = think_region(text, think_tag)
  if region is None:
    return []
  start, end = region
  content = text[start:end]
  cuts = [m.end() for m in _SENTENCE_END.finditer(content)]
  pieces = []
  prev = 0
  for cut in [*cuts, len(content)]:
    frag = content[prev:cut]
    lead = len(frag) - len(frag.lstrip())
    body = frag.strip()
    if body:
      s = start + prev + lead
      pieces.append((s, s + len(body)))
    prev = cut
  spans = []
  pending = None  # start of list numbers waiting for their sentence
  for i, (s, e) in enumerate(pieces):
    if _LIST_NUMBER.fullmatch(text[s:e]) and i + 1 < len(pieces):
      pending = s if pending is None else pending
      continue
    spans.append((s if pending is None else pending, e))
    pending = None
  return spans


# ---------------------------------------------------------------------------
# Token ids -> text with the exact character range of every token.


@functools.cache
def _byte_decoder() -> dict[str, int]:
  """GPT-2 byte-level BPE alphabet: printable stand-in char -> byte."""
  keep = [
    *range(ord("!"), ord("~") + 1),
    *range(ord("¡"), ord("¬") + 1),
    *range(ord("®"), ord("ÿ") + 1),
  ]
  chars = list(keep)
  extra = 0
  for b in range(256):
    if b not in keep:
      keep.append(b)
      chars.append(256 + extra)
      extra += 1
  return {chr(c): b for b, c in zip(keep, chars)}


def _is_byte_level(tokenizer: Any) -> bool:
  backend = getattr(tokenizer, "backend_tokenizer", None)
  decoder = getattr(backend, "decoder", None)
  return type(decoder).__name__ == "ByteLevel"


def _token_bytes(token_ids: Sequence[int], tokenizer: Any) -> list[bytes]:
  """The bytes each token contributes, for a byte-level BPE tokenizer."""
  added_tokens = getattr(tokenizer, "added_tokens_decoder", {})
  added = {i: t.content for i, t in added_tokens.items()}
  pieces = tokenizer.convert_ids_to_tokens([int(i) for i in token_ids])
  table = _byte_decoder()
  out = []
  for tid, piece in zip(token_ids, pieces):
    if int(tid) in added:
      out.append(added[int(tid)].encode("utf-8"))
    elif piece is None:
      out.append(b"")
    else:
      out.append(
        b"".join(
          bytes([table[c]]) if c in table else c.encode("utf-8") for c in piece
        )
      )
  return out


def _spans_from_bytes(token_bytes: list[bytes]) -> tuple[str, np.ndarray]:
  """Decodes the bytes (invalid UTF-8 -> U+FFFD) with per-token char spans."""
  decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
  chars: list[str] = []
  spans = np.zeros((len(token_bytes), 2), np.int32)
  # Bytes fed but not yet emitted as characters, as (token index) entries.
  waiting: list[int] = []
  first = [-1] * len(token_bytes)
  last = [-1] * len(token_bytes)

  def emit(out: str):
    if not out:
      return
    a = len(chars)
    chars.extend(out)
    for j in waiting:
      first[j] = a if first[j] < 0 else first[j]
      last[j] = len(chars)
    waiting.clear()

  for i, bs in enumerate(token_bytes):
    for b in bs:
      if not waiting or waiting[-1] != i:
        waiting.append(i)
      emit(decoder.decode(bytes([b])))
  emit(decoder.decode(b"", final=True))
  pos = 0
  for i in range(len(token_bytes)):
    if first[i] < 0:  # a token with no bytes: empty span where it stands
      spans[i] = (pos, pos)
    else:
      spans[i] = (first[i], last[i])
      pos = last[i]
  return "".join(chars), spans


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
  try:
    return tokenizer.decode(
      list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
  except TypeError:  # a non-HF tokenizer with a plain decode(ids)
    return tokenizer.decode(list(ids))


def _spans_incremental(
  token_ids: Sequence[int], tokenizer: Any
) -> tuple[str, np.ndarray]:
  """Generic incremental detokenisation (any tokenizer with `decode`).

  Decodes a short window before each token so context-dependent decoders
  (SentencePiece's leading space) behave; tokens that end inside a
  character (U+FFFD) wait and share the range of what they complete.
  """
  ids = [int(i) for i in token_ids]
  text = ""
  spans = np.zeros((len(ids), 2), np.int32)
  prefix, read = 0, 0
  waiting: list[int] = []
  for i in range(len(ids)):
    waiting.append(i)
    before = _decode(tokenizer, ids[prefix:read])
    now = _decode(tokenizer, ids[prefix : i + 1])
    if len(now) > len(before) and not now.endswith("\ufffd"):
      a = len(text)
      text += now[len(before) :]
      spans[waiting] = (a, len(text))
      waiting = []
      prefix, read = read, i + 1
  if waiting:
    before = _decode(tokenizer, ids[prefix:read])
    now = _decode(tokenizer, ids[prefix:])
    a = len(text)
    text += now[len(before) :]
    spans[waiting] = (a, len(text))
  return text, spans


def decode_with_spans(
  token_ids: Sequence[int], tokenizer: Any
) -> tuple[str, np.ndarray]:
  """Decodes sampled token ids, with each token's character range.

  Exact for byte-level BPE tokenizers (Qwen, GPT-2 style: from the token
  bytes, so a token holding part of a multi-byte character covers that
  character) and for any tokenizer exposing `token_bytes(id) -> bytes`.
  Other tokenizers are detokenised incrementally with `decode`: exact when
  every token decodes to whole characters; where one ends inside a
  character, it and the tokens completing it share the union of their text.

  Args:
    token_ids: int[T] completion token ids (no padding).
    tokenizer: an HF tokenizer, or an object with `decode(ids)`.

  Returns:
    (text, spans int32[T, 2]) with text[spans[t, 0]:spans[t, 1]] the
    characters token t contributes to.
  """
  if hasattr(tokenizer, "token_bytes"):
    return _spans_from_bytes([tokenizer.token_bytes(int(i)) for i in token_ids])
  if _is_byte_level(tokenizer):
    return _spans_from_bytes(_token_bytes(token_ids, tokenizer))
  return _spans_incremental(token_ids, tokenizer)


def assign_tokens(
  token_spans_Tx2: np.ndarray, step_spans: Sequence[tuple[int, int]]
) -> np.ndarray:
  """Step index per token (first step it overlaps), -1 if none: int32[T].

  An empty token span counts as inside a step when it lies in [start, end).
  """
  step_id_T = np.full(len(token_spans_Tx2), -1, np.int32)
  k = 0
  for t, (a, b) in enumerate(np.asarray(token_spans_Tx2).tolist()):
    while k < len(step_spans) and step_spans[k][1] <= a:
      k += 1
    if k == len(step_spans):
      break
    s, e = step_spans[k]
    if (b > s and a < e) or (a == b and s <= a < e):
      step_id_T[t] = k
  return step_id_T


def step_ids_from_tokens(
  token_ids: Sequence[int], tokenizer: Any, think_tag: str = "think"
) -> tuple[np.ndarray, int, list[str]]:
  """Step index of each sampled token.

  Args:
    token_ids: int[T] completion token ids (no padding).
    tokenizer: see `decode_with_spans`.
    think_tag: "think" or "thinking" (tokenizer.think_tag).

  Returns:
    (step_id_T int32[T]: k in 0..K-1 inside step k, -1 elsewhere;
     K; the K step texts).
  """
  text, token_spans = decode_with_spans(token_ids, tokenizer)
  spans = split_steps(text, think_tag)
  return (
    assign_tokens(token_spans, spans),
    len(spans),
    [text[s:e] for s, e in spans],
  )


def step_ids_from_text(
  text: str, tokenizer: Any, think_tag: str = "think"
) -> tuple[np.ndarray, np.ndarray, int, list[str]]:
  """Tokenises `text` (no special tokens added) and maps steps to tokens.

  For completions that start as text (SFT targets, logged samples); uses
  the tokenizer's offset mapping.

  Returns:
    (token_ids int32[T], step_id_T int32[T], K, step texts).
  """
  enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
  offsets = np.asarray(enc["offset_mapping"], np.int32).reshape(-1, 2)
  spans = split_steps(text, think_tag)
  return (
    np.asarray(enc["input_ids"], np.int32),
    assign_tokens(offsets, spans),
    len(spans),
    [text[s:e] for s, e in spans],
  )


@dataclasses.dataclass
class StepBatch:
  """Steps of a batch of completions.

  step_id_BxT: int32[B, T], 0-based step index of each token (any K), -1
    outside steps and on padding.
  num_steps_B: int32[B], the true K of each completion.
  step_texts: B lists of K step texts.
  texts: the B decoded completion texts.
  """

  step_id_BxT: np.ndarray
  num_steps_B: np.ndarray
  step_texts: list[list[str]]
  texts: list[str]

  @property
  def max_steps(self) -> int:
    """The largest K of the batch (0 for an empty batch)."""
    return int(self.num_steps_B.max(initial=0))


def batch_step_ids(
  token_ids_BxT: np.ndarray,
  lengths_B: Sequence[int],
  tokenizer: Any,
  think_tag: str = "think",
) -> StepBatch:
  """`step_ids_from_tokens` over a padded batch of sampled completions.

  Every step keeps its own index however many there are; arrays indexed
  by step (labels, value logits) are sized by the caller from
  `StepBatch.max_steps`.

  Args:
    token_ids_BxT: int[B, T] completion ids, right-padded.
    lengths_B: int[B] number of real tokens per row.
    tokenizer: see `decode_with_spans`.
    think_tag: "think" or "thinking".

  Returns:
    A `StepBatch`.
  """
  token_ids_BxT = np.asarray(token_ids_BxT)
  b, t = token_ids_BxT.shape
  step_id = np.full((b, t), -1, np.int32)
  num_steps = np.zeros(b, np.int32)
  all_texts, texts = [], []
  for i in range(b):
    n = int(lengths_B[i])
    text, token_spans = decode_with_spans(token_ids_BxT[i, :n], tokenizer)
    spans = split_steps(text, think_tag)
    step_id[i, :n] = assign_tokens(token_spans, spans)
    num_steps[i] = len(spans)
    all_texts.append([text[s:e] for s, e in spans])
    texts.append(text)
  return StepBatch(step_id, num_steps, all_texts, texts)
