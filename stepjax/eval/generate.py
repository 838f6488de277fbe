r"""`stepjax generate`: reason about images (streamed), or a list of them.

  stepjax generate --checkpoint=runs/a --image=scan.dcm \
      --question="Which organ has a lesion?" [--window_center=40 \
      --window_width=400]
  stepjax generate --checkpoint=runs/a --image=prior.png,current.png \
      --question="Has the lesion grown?"
  stepjax generate --checkpoint=hf_dir --input=list.json --out=out.jsonl

Several images for one prompt: a comma-separated --image list; the prompt
shows them in that order, one image placeholder each before the question
(`data.tokenizer.build_prompt`). A prompt holds as many image slots as it
needs (at least `--config.data.max_images`).

The checkpoint is a run directory, an Orbax checkpoint or an HF directory
(`eval/checkpoints.py`). Images: PNG, JPEG, ... and DICOM (window/level
from the flags, else from the file, else the pixel range). Decoding is
greedy by default (`--config.sampling.eval_temperature`), at most
`--config.sampling.max_new_tokens` tokens; the image is resized within
`--config.data.min_pixels` / `max_pixels`.

Streaming. The jitted sampler (`sampling/sampler.py`) generates a whole
completion inside one `lax.while_loop`, so nothing can be shown before it
ends. `Streamer` instead runs the same computation as a Python loop over
two jitted functions, each compiled once per prompt shape: a prefill that
fills the model's KV cache and a one-token decode step over that cache
(both the model's own forward, as in the sampler; the decode donates the
cache, so it is updated in place); tokens are drawn by the sampler's
`sample_tokens` with the same per-row keys (`row_keys`), so for greedy
decoding (and for sampling with the same key) the tokens equal
`sampler.generate`'s. Text is printed as tokens arrive
(held back while a multi-byte character is incomplete); then the numbered
reasoning steps and the answer.

Batch mode (`--input`): a JSON list of {"image": path or [paths],
"question": str} (relative paths are relative to the list's folder;
entries may hold different numbers of images); prompts are batched
`data.batch_size` at a time through `sampler.generate` and one JSON line
per entry is written to --out (image, question, completion, steps,
answer, num_tokens).

Shapes: B prompts, T prompt tokens (left padded), M image slots per
prompt, N patch rows, P = 1176, S cache slots = T + R - 1, R =
max_new_tokens, V vocab.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from stepjax import image_slots
from stepjax.data import batching, images, pipeline, records
from stepjax.data import tokenizer as tokenizer_lib
from stepjax.errors import InputError, MissingInputError
from stepjax.eval import checkpoints
from stepjax.models import language, rope_index, vlm
from stepjax.rl import rewards
from stepjax.rl import steps as steps_lib
from stepjax.sampling import sampler


def main(argv: list[str], config: Any, flag_values: Any) -> None:
  logging.set_verbosity(config.log_level)
  paths = image_paths(flag_values.image)
  window = dicom_window(
    paths,
    flag_values.window_center,
    flag_values.window_width,
  )
  if flag_values.input:
    loaded = checkpoints.load(config, flag_values.checkpoint)
    n = generate_file(loaded, flag_values.input, flag_values.out, window)
    print(f"wrote {n} completions to {flag_values.out}", flush=True)
    return
  loaded = checkpoints.load(config, flag_values.checkpoint)
  result = generate_one(
    loaded,
    paths,
    flag_values.question,
    window=window,
    on_text=lambda s: print(s, end="", flush=True),
  )
  print("\n" + format_result(result), flush=True)


# ----------------------------------------------------------------- inputs


def image_paths(value: str | Sequence[str] | None) -> list[str]:
  """The --image flag's paths: a list, or one string of comma-separated
  paths."""
  if not value:
    return []
  parts = value.split(",") if isinstance(value, str) else list(value)
  return [p.strip() for p in parts if p.strip()]


def dicom_window(
  path: str | Sequence[str], center: float | None, width: float | None
) -> tuple[float, float] | None:
  """(center, width) from the flags for every image; a missing half comes
  from the file (`path`, or a list holding one path).

  None (both flags unset) lets the decoder use each file's own window.
  """
  if center is None and width is None:
    return None
  if center is not None and width is not None:
    if width <= 0:
      raise InputError(f"--window_width={width}: must be positive")
    return float(center), float(width)
  found = image_paths(path)
  if len(found) != 1:
    raise InputError(
      "--window_center and --window_width must be given together in "
      "--input mode or with several images (there is no single file to "
      "take the other from)"
    )
  path = found[0]
  file_center, file_width = file_window(path)
  return (
    float(file_center if center is None else center),
    float(file_width if width is None else width),
  )


def file_window(path: str) -> tuple[float, float]:
  """The window the decoder uses for a DICOM file when no flag is given:
  the file's WindowCenter/WindowWidth, else the rescaled pixel range."""
  import pydicom
  from pydicom import pixels

  try:
    ds = pydicom.dcmread(path, force=True)
    if "WindowCenter" in ds and "WindowWidth" in ds:
      return _first(ds.WindowCenter), _first(ds.WindowWidth)
    values = pixels.apply_rescale(ds.pixel_array, ds).astype(np.float64)
  except Exception as e:  # pydicom raises many types for bad files.
    raise InputError(
      f"--image={path}: cannot read a DICOM window from it ({e}); give "
      "both --window_center and --window_width"
    ) from None
  lo, hi = float(values.min()), float(values.max())
  width = max(hi - lo + 1.0, 2.0)
  return lo + (width - 1.0) / 2.0 + 0.5, width


def _first(value) -> float:
  """DICOM window values may be multi-valued; the first is the default."""
  if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
    value = value[0]
  return float(value)


def prepare_example(
  image_path: str | Sequence[str],
  question: str,
  config: Any,
  tokenizer: Any,
  window: tuple[float, float] | None = None,
  *,
  spec: images.ImageSpec = images.QWEN2_5_VL,
) -> dict[str, Any]:
  """Decodes, preprocesses (for the model family's `spec`) and tokenizes
  one question and its image(s) (a path, or paths in prompt order) into
  the example dict `collate` pads."""
  paths = [image_path] if isinstance(image_path, str) else list(image_path)
  if not paths:
    raise InputError(f"no image for question {question[:60]!r}")
  if not question.strip():
    raise InputError(f"empty question for image {', '.join(paths)}")
  d = config.data
  pixels, grids = [], []
  for path in paths:
    rgb = images.decode_image(
      records.ImageRef(path=path), record_id=path, window=window
    )
    pixels_NxP, grid_thw = images.preprocess(
      rgb, min_pixels=d.min_pixels, max_pixels=d.max_pixels, spec=spec
    )
    pixels.append(pixels_NxP)
    grids.append(grid_thw)
  ids = tokenizer_lib.encode_prompt(
    tokenizer,
    question,
    [spec.image_tokens(np.prod(g)) for g in grids],
    config.tokenizer.think_tag,
  )
  return {
    "prompt_ids": np.asarray(ids, np.int32),
    "pixels": pixels,
    "grids": grids,
    "id": ",".join(paths),
    "question": question,
    "answer": "",
    "rationale": "",
    "meta": {},
  }


def collate(
  examples: Sequence[dict],
  config: Any,
  pad_id: int,
  *,
  spec: images.ImageSpec = images.QWEN2_5_VL,
  max_images: int = 0,
) -> dict:
  """Pads examples to `data.token_buckets` / `data.patch_buckets` (or to
  their exact size when larger) and to `data.max_images` image slots per
  prompt (or `max_images`, or the most images of one example, if more),
  so repeated calls reuse compilations; `spec` is the one
  `prepare_example` used."""
  d = config.data
  longest = max(len(e["prompt_ids"]) for e in examples)
  most = max(x.shape[0] for e in examples for x in e["pixels"])
  opts = pipeline.PipelineOptions(
    token_buckets=tuple(int(b) for b in d.token_buckets) + (longest,),
    patch_buckets=tuple(int(b) for b in d.patch_buckets) + (most,),
    image_spec=spec,
    max_images=max(
      int(d.get("max_images", 1)),
      int(max_images),
      *(len(e["pixels"]) for e in examples),
    ),
  )
  return batching.collate(examples, opts, pad_id)


# -------------------------------------------------------------- streaming


@functools.partial(jax.jit, static_argnames=("graphdef", "slots"))
def _prefill(graphdef, params, prompt: sampler.PromptBatch, slots: int):
  """Fills a cache of `slots` slots with the prompt; last logits_BxV."""
  cfg = nnx.merge(graphdef, params).cfg
  ids = jnp.asarray(prompt.prompt_ids_PxT, jnp.int32)
  cache = language.init_cache(cfg, ids.shape[0], slots)
  logits, _, cache = vlm.forward(
    graphdef, params, ids, prompt.positions_3xPxT, prompt.prompt_mask_PxT,
    cache=cache, cache_index=0, **image_slots.model_inputs(prompt.images),
  )  # fmt: skip
  return logits[:, -1], cache


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnums=(4,))
def _decode(graphdef, params, tok_B, positions_3xBx1, cache, index):
  """Feeds one token per row at cache slot `index`; next logits_BxV."""
  ones_Bx1 = jnp.ones((tok_B.shape[0], 1), jnp.int32)
  logits, _, cache = vlm.forward(
    graphdef, params, tok_B[:, None], positions_3xBx1, ones_Bx1,
    cache=cache, cache_index=index,
  )  # fmt: skip
  return logits[:, -1], cache


@functools.partial(
  jax.jit, static_argnames=("temperature", "top_k", "top_p", "banned")
)
def _pick(logits_BxV, rng, step, *, temperature, top_k, top_p, banned):
  """Next token per row, drawn exactly as `sampler.generate` draws it."""
  banned_V = np.zeros((logits_BxV.shape[-1],), bool)
  banned_V[list(banned)] = True
  rows_B = jnp.arange(logits_BxV.shape[0], dtype=jnp.int32)
  keys = sampler.row_keys(rng, step, rows_B)
  tok, _, _ = sampler.sample_tokens(
    logits_BxV, keys, temperature, top_k, top_p, banned_V
  )
  return tok


class Streamer:
  """Token-by-token generation for one batch of prompts (see module doc).

  Rows stop at their first stop id (`TokenizerInfo.stop_ids`); `stream`
  yields each step's tokens_B (pad for finished rows) until every row
  stopped or R tokens exist.
  """

  def __init__(self, loaded: checkpoints.LoadedPolicy, config: Any):
    self.loaded = loaded
    s = config.sampling
    self.max_new_tokens = int(s.max_new_tokens)
    self.options = dict(
      temperature=float(s.eval_temperature),
      top_k=int(s.top_k),
      top_p=float(s.top_p),
      banned=(loaded.cfg.image_pad_token_id, loaded.cfg.video_pad_token_id),
    )
    self.stop_ids = np.asarray(loaded.tok_info.stop_ids, np.int32)
    self.pad_id = loaded.tok_info.pad_id

  def stream(self, batch: dict, rng: jax.Array):
    """Yields tokens_B (numpy int32) for steps 0, 1, ..."""
    lp = self.loaded
    graphdef = lp.graphs.policy
    prompt = sampler.prepare_inputs(batch, lp.cfg)
    t = prompt.prompt_ids_PxT.shape[1]
    r = self.max_new_tokens
    logits, cache = _prefill(
      graphdef, lp.params, prompt, slots=t + max(r - 1, 0)
    )
    num_real_B = jnp.asarray(prompt.num_real_P, jnp.int32)
    deltas_B = jnp.asarray(prompt.deltas_P, jnp.int32)
    done = np.zeros((num_real_B.shape[0],), bool)
    tok = None  # the token fed at the next step
    for step in range(r):
      if tok is not None:
        pos = rope_index.next_positions(num_real_B + step - 1, deltas_B)
        logits, cache = _decode(
          graphdef, lp.params, jnp.asarray(tok), pos, cache, t + step - 1
        )
      tok = np.asarray(_pick(logits, rng, step, **self.options), np.int32)
      tok = np.where(done, self.pad_id, tok)
      yield tok
      done |= np.isin(tok, self.stop_ids)
      if done.all():
        return


class TextStream:
  """Incremental detokenisation: emits only text that is final."""

  def __init__(self, tokenizer: Any, stop_ids: Sequence[int]):
    self.tokenizer = tokenizer
    self.stop_ids = set(int(i) for i in stop_ids)
    self.ids: list[int] = []
    self.shown = 0

  def push(self, token: int) -> str:
    if token in self.stop_ids:
      return ""
    self.ids.append(int(token))
    text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
    if text.endswith("\ufffd"):  # a character split over tokens
      return ""
    new, self.shown = text[self.shown :], len(text)
    return new

  def text(self) -> str:
    return self.tokenizer.decode(self.ids, skip_special_tokens=False)


# ---------------------------------------------------------------- results


def parse_completion(text: str, think_tag: str) -> dict[str, Any]:
  """{"completion", "steps", "answer"} of a generated text."""
  spans = steps_lib.split_steps(text, think_tag)
  return {
    "completion": text,
    "steps": [text[a:b].strip() for a, b in spans],
    "answer": rewards.extract_answer(text),
  }


def format_result(result: dict[str, Any]) -> str:
  lines = ["Reasoning steps:"]
  if not result["steps"]:
    lines.append("  (none)")
  lines += [f"  {i}. {s}" for i, s in enumerate(result["steps"], start=1)]
  lines.append(f"Answer: {result['answer']}")
  return "\n".join(lines)


def generate_one(
  loaded: checkpoints.LoadedPolicy,
  image_path: str | Sequence[str],
  question: str,
  *,
  window: tuple[float, float] | None = None,
  on_text: Callable[[str], Any] | None = None,
  seed: int | None = None,
) -> dict[str, Any]:
  """Streams one completion for a question on one image or several (a
  list of paths, in prompt order); `on_text` receives each new piece of
  text.

  Returns parse_completion(...) plus "tokens" (the generated ids, a stop id
  included when emitted).
  """
  config = loaded.config
  spec = images.image_spec(loaded.cfg)
  example = prepare_example(
    image_path, question, config, loaded.tokenizer, window, spec=spec
  )
  batch = collate([example], config, loaded.tok_info.pad_id, spec=spec)
  streamer = Streamer(loaded, config)
  text = TextStream(loaded.tokenizer, loaded.tok_info.stop_ids)
  rng = jax.random.key(config.seed if seed is None else seed)
  tokens = []
  for tok_B in streamer.stream(batch, rng):
    tokens.append(int(tok_B[0]))
    piece = text.push(int(tok_B[0]))
    if piece and on_text is not None:
      on_text(piece)
  result = parse_completion(text.text(), config.tokenizer.think_tag)
  result["tokens"] = tokens
  return result


def read_input_list(path: str) -> list[dict[str, Any]]:
  """The --input list: [{"image": path or [paths], "question": str}, ...]
  (each "image" comes back as given, its relative paths resolved)."""
  p = epath.Path(path)
  try:
    entries = json.loads(p.read_text())
  except FileNotFoundError:
    raise MissingInputError(f"--input={path}: no such file") from None
  except json.JSONDecodeError as e:
    raise InputError(f"--input={path}: not valid JSON ({e})") from None
  if not isinstance(entries, list):
    raise InputError(f"--input={path}: expected a JSON list of objects")
  out = []
  for i, e in enumerate(entries):
    if not isinstance(e, dict) or not {"image", "question"} <= set(e):
      raise InputError(
        f"--input={path}: entry {i} must be an object with 'image' and "
        f"'question', got {e!r}"
      )
    image = e["image"]
    many = isinstance(image, list)
    if many and not image:
      raise InputError(f"--input={path}: entry {i} has an empty image list")
    resolved = [_resolve(p, str(x)) for x in (image if many else [image])]
    out.append(
      {
        "image": resolved if many else resolved[0],
        "question": str(e["question"]),
      }
    )
  return out


def _resolve(list_path: epath.Path, image: str) -> str:
  """An --input entry's image path, relative ones under the list's folder."""
  if "://" not in image and not image.startswith("/"):
    return str(list_path.parent / image)
  return image


def generate_file(
  loaded: checkpoints.LoadedPolicy,
  input_path: str,
  out_path: str,
  window: tuple[float, float] | None = None,
) -> int:
  """Batch mode: completions for every entry of `input_path` as JSONL."""
  config = loaded.config
  entries = read_input_list(input_path)
  s = config.sampling
  size = max(int(config.data.batch_size), 1)
  rng = jax.random.key(config.seed)
  think = config.tokenizer.think_tag
  spec = images.image_spec(loaded.cfg)
  # Every chunk gets as many image slots per prompt: one compilation.
  slots = max(
    (len(e["image"]) if isinstance(e["image"], list) else 1 for e in entries),
    default=1,
  )
  rows = []
  for start in range(0, len(entries), size):
    chunk = entries[start : start + size]
    examples = [
      prepare_example(
        e["image"], e["question"], config, loaded.tokenizer, window, spec=spec
      )
      for e in chunk
    ]
    # A short last chunk is filled with copies so every chunk has one
    # shape (one compilation); the copies' rows are dropped.
    examples += examples[-1:] * (size - len(examples))
    batch = collate(
      examples, config, loaded.tok_info.pad_id, spec=spec, max_images=slots
    )
    out = sampler.generate(
      loaded.graphs.policy,
      loaded.params,
      sampler.prepare_inputs(batch, loaded.cfg),
      jax.random.fold_in(rng, start),
      max_new_tokens=s.max_new_tokens,
      temperature=s.eval_temperature,
      top_k=s.top_k,
      top_p=s.top_p,
      eos_ids=loaded.tok_info.stop_ids,
      pad_id=loaded.tok_info.pad_id,
    )
    out = jax.device_get(out)
    for i, e in enumerate(chunk):
      ids = [
        int(x)
        for x in out.tokens_BxR[i, : int(out.lengths_B[i])]
        if int(x) not in loaded.tok_info.stop_ids
      ]
      text = loaded.tokenizer.decode(ids, skip_special_tokens=False)
      row = {"image": e["image"], "question": e["question"]}
      row.update(parse_completion(text, think))
      row["num_tokens"] = int(out.lengths_B[i])
      rows.append(row)
  if jax.process_index() == 0:
    p = epath.Path(out_path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(
      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
  return len(rows)
