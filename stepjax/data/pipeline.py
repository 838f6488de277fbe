"""Grain input pipeline: records -> padded numpy batches for the trainer.

Stages (a `grain.MapDataset` up to the decode, then a `grain.IterDataset`):
seeded shuffle (a fresh permutation every epoch) -> repeat -> this JAX
process's slice `[process_index::process_count]` (each process reads and
decodes only its own records) -> decode + the model family's image
preprocessing (`opts.image_spec`) -> tokenize
-> [optional worker processes] -> batch and pad to a bucket shape
(`stepjax.data.batching`) -> numpy batch. `iter(dataset)` gives a
`grain.DatasetIterator` whose `get_state()/set_state()` (a JSON-able dict)
checkpoint with Orbax through
`grain.checkpoint.CheckpointSave/CheckpointRestore`; its `.stats` counts
examples and skipped records.

Shapes: B prompts per batch on this process (data.batch_size divided by
the process count), T prompt tokens (a value of data.token_buckets), M
image slots per prompt (data.max_images), I = B * M image slots, N vision
patches per image (a value of data.patch_buckets), P values per patch
(`opts.image_spec.patch_dim`: 1176 for Qwen2.5-VL, 1536 for Qwen3-VL), S
SFT target tokens (`target_len`).

Batch layout (numpy; a record has one image or, from MRPO json, several):
  prompt_ids_BxT   int32, LEFT-padded with the tokenizer's pad id, so every
                   prompt ends at column T-1 and generation appends.
  prompt_mask_BxT  int32, 1 for real tokens, 0 for padding.
  pixels_IxNxP     float32 patch rows (images.preprocess), zero-padded;
                   slot b * M + k holds prompt b's k-th image (its k-th
                   image placeholder), slots past its images are empty.
  patch_mask_IxN   int32, 1 for real patches.
  grid_thw_Ix3     int32 (t, h, w) of each image in patches (14 px for
                   Qwen2.5-VL, 16 for Qwen3-VL; InternVL: t tiles of h x w
                   patches), (0, 0, 0) for an empty slot; the prompt holds
                   t*h*w // merge**2 (= 4) image pad tokens per image.
  image_prompt_I   int32, the prompt owning each slot (b for slot b*M + k;
                   `stepjax/image_slots.py`). With data.max_images = 1
                   (the default) I = B and slot b is prompt b's image.
  target_ids_BxS   int32 (only when target_len > 0, for SFT): the gold
  target_mask_BxS  completion `completion_fn(rationale sentences, answer)`
                   followed by eos, RIGHT-padded with the pad id.
  ids, questions, answers, rationales: lists of B strings; metas: list of
                   B dicts (host side, never sent to devices).

Buckets: each example needs the smallest token bucket >= its prompt
length and the smallest patch bucket >= its patch count; a batch is padded
to the largest bucket among its examples. We chose that over grouping
same-bucket examples into batches because grouping needs a buffer of
pending examples per bucket: the buffer would have to go into the
checkpointed iterator state, it reorders data relative to the seeded
shuffle and it stalls when a bucket is rare. Padding up keeps the shuffle
order exact, the state a plain Grain position, and still bounds the jitted
shapes to len(token_buckets) * len(patch_buckets); the cost is extra
padding, small when buckets are close (the defaults are 96/128 tokens and
one patch bucket).

Bad records (image missing, corrupt or not an image, decompression bomb,
path escaping the root, too many patches, more images than
data.max_images, prompt or target too long, a
record the source cannot read such as a parquet row with a null image
cell): on_bad_record="fail" raises `BadRecordError` naming the file, the
record and, for size limits, the config key to raise; "skip" drops the
record and counts it in `iterator.stats` by reason (the first few are
logged one by one, then one summary line per pass over the data;
`skip_metrics` gives the totals as metrics). A pass over the data that
keeps no record at all raises `errors.AllRecordsSkippedError` naming the
source, the count and the reasons, instead of repeating forever.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from stepjax.data import batching, errors, images, records, sources
from stepjax.errors import InputError

# (question, num_image_tokens: an int, or one per image) -> text
PromptFn = Callable[[str, int | Sequence[int]], str]
CompletionFn = Callable[[list[str], str], str]  # (steps, answer) -> text
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
  """Everything the pipeline needs from the config (see `from_config`)."""

  batch_size: int = 4  # global, over all processes
  min_pixels: int = 56 * 56
  max_pixels: int = 112 * 112
  token_buckets: tuple[int, ...] = (96, 128)
  patch_buckets: tuple[int, ...] = (64,)
  shuffle: bool = True
  seed: int = 0
  num_epochs: int | None = 1  # None = repeat forever
  drop_remainder: bool = True
  on_bad_record: str = "fail"
  num_workers: int = 0  # >0: decode in that many worker processes
  read_threads: int = 2  # threads reading ahead in this process
  max_image_pixels: int = images.DEFAULT_MAX_IMAGE_PIXELS
  target_len: int = 0  # >0: add SFT targets of this many tokens
  image_root: str = ""  # image paths must resolve under this ("" = as given)
  max_images: int = 1  # image slots per prompt (data.max_images)
  # The model family's patch size, merge size and mean/std
  # (`images.image_spec(model_cfg)`).
  image_spec: images.ImageSpec = images.QWEN2_5_VL

  @classmethod
  def from_config(
    cls,
    config: Any,
    *,
    sft: bool = False,
    model_cfg: Any = None,
    **overrides: Any,
  ) -> PipelineOptions:
    """Reads `config.data.*` (and `config.seed`).

    With `sft`, targets are `config.sampling.max_new_tokens` long. An
    optional `data.max_image_pixels` key overrides the bomb guard;
    `data.max_images` (default 1) sets the image slots per prompt.
    `model_cfg` (the job's `models.config.ModelConfig`) sets the image
    preprocessing to its family's; without it, Qwen2.5-VL's is used.
    """
    d = config.data
    kwargs = dict(
      batch_size=int(d.batch_size),
      min_pixels=int(d.min_pixels),
      max_pixels=int(d.max_pixels),
      token_buckets=tuple(int(b) for b in d.token_buckets),
      patch_buckets=tuple(int(b) for b in d.patch_buckets),
      shuffle=bool(d.shuffle),
      seed=int(config.seed),
      on_bad_record=str(d.on_bad_record),
      num_workers=int(d.num_workers),
      max_image_pixels=int(
        d.get("max_image_pixels", images.DEFAULT_MAX_IMAGE_PIXELS)
      ),
      target_len=int(config.sampling.max_new_tokens) if sft else 0,
      max_images=int(d.get("max_images", 1)),
    )
    if model_cfg is not None:
      kwargs["image_spec"] = images.image_spec(model_cfg)
    kwargs.update(overrides)
    return cls(**kwargs)


def split_sentences(text: str) -> list[str]:
  """Rationale -> reasoning steps: one per sentence or line."""
  return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


@dataclasses.dataclass(frozen=True)
class _Unreadable:
  """What `_ReadGuard` yields for a record the source could not read."""

  message: str
  reason: str


class _ReadGuard:
  """The source as Grain reads it: under "skip", a `BadRecordError` raised
  by `source[i]` (a parquet row whose image cell is null, a record failing
  its own checks) becomes an `_Unreadable` marker that `_Prepare` counts,
  instead of an error inside Grain's read."""

  def __init__(self, source: Any, on_bad_record: str):
    self.source = source
    self.on_bad_record = on_bad_record

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> records.Record | _Unreadable:
    try:
      return self.source[index]
    except errors.BadRecordError as e:
      if self.on_bad_record == "fail":
        raise
      return _Unreadable(str(e), e.reason)

  def __repr__(self) -> str:
    return repr(self.source)


class _Prepare:
  """(position, record) -> example dict (or a skip marker); runs in worker
  processes. Both carry "pass": which pass over the source the position
  falls in, so the batcher can tell a pass that kept nothing."""

  def __init__(self, opts, tokenizer, prompt_fn, completion_fn, pass_len=1):
    self.opts = opts
    self.tokenizer = tokenizer
    self.prompt_fn = prompt_fn
    self.completion_fn = completion_fn
    self.pass_len = max(int(pass_len), 1)

  def __call__(self, position: int, record: Any) -> dict[str, Any]:
    data_pass = int(position) // self.pass_len
    if isinstance(record, _Unreadable):
      return _skip(record.message, "read", record.reason, data_pass)
    try:
      example = self._prepare(record)
    except errors.BadRecordError as e:
      if self.opts.on_bad_record == "fail":
        raise
      kind = getattr(e, "kind", "image")
      return _skip(str(e), kind, e.reason, data_pass)
    example["pass"] = data_pass
    return example

  def _image(self, record, ref) -> tuple[np.ndarray, np.ndarray]:
    """(pixels_NxP, grid_thw) of one of the record's images."""
    o = self.opts
    image = images.decode_image(
      ref,
      o.image_root,
      record_id=record.id,
      max_image_pixels=o.max_image_pixels,
      origin=record.origin,
    )
    try:
      pixels_NxP, grid_thw = images.preprocess(
        image,
        min_pixels=o.min_pixels,
        max_pixels=o.max_pixels,
        spec=o.image_spec,
      )
    except ValueError as e:
      raise self._bad(record, "image", str(e)) from None
    num_patches = pixels_NxP.shape[0]
    if batching.bucket_for(num_patches, o.patch_buckets) is None:
      raise self._bad(
        record,
        "too_many_patches",
        f"image {ref.describe()} gives {num_patches} patches "
        f"(grid {grid_thw.tolist()}), more than the largest of "
        f"data.patch_buckets={list(o.patch_buckets)}; raise "
        f"data.patch_buckets or lower data.max_pixels={o.max_pixels}",
      )
    return pixels_NxP, grid_thw

  def _bad(self, record, kind: str, reason: str) -> errors.BadRecordError:
    e = errors.BadRecordError(
      reason, file=record.origin or record.image.describe(), record=record.id
    )
    e.kind = kind
    return e

  def _prepare(self, record: records.Record) -> dict[str, Any]:
    o = self.opts
    refs = record.images
    if len(refs) > o.max_images:
      raise self._bad(
        record,
        "too_many_images",
        f"record has {len(refs)} images, more than data.max_images="
        f"{o.max_images}; raise data.max_images to {len(refs)} or more",
      )
    pixels, grids = zip(*(self._image(record, ref) for ref in refs))
    tokens = [o.image_spec.image_tokens(x.shape[0]) for x in pixels]
    # One image: an int, as prompt functions of one image take it.
    prompt = self.prompt_fn(
      record.question, tokens[0] if len(tokens) == 1 else tuple(tokens)
    )
    prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
    token_bucket = batching.bucket_for(len(prompt_ids), o.token_buckets)
    if token_bucket is None:
      which = "the image" if len(tokens) == 1 else f"{len(tokens)} images"
      raise self._bad(
        record,
        "prompt_too_long",
        f"prompt has {len(prompt_ids)} tokens ({sum(tokens)} for "
        f"{which}), more than the largest of "
        f"data.token_buckets={list(o.token_buckets)}; raise "
        "data.token_buckets (or lower data.max_pixels)",
      )
    example = {
      "prompt_ids": np.asarray(prompt_ids, np.int32),
      "pixels": list(pixels),  # one N_k x P array per image, in order
      "grids": list(grids),
      "id": record.id,
      "question": record.question,
      "answer": record.answer,
      "rationale": record.rationale,
      "meta": dict(record.meta),
      "image": record.image,  # for an LLM step judge (rollout)
    }
    if o.target_len:
      steps = split_sentences(record.rationale)
      text = self.completion_fn(steps, record.answer)
      target = self.tokenizer.encode(text, add_special_tokens=False)
      target.append(self.tokenizer.eos_token_id)
      if len(target) > o.target_len:
        raise self._bad(
          record,
          "target_too_long",
          f"SFT target has {len(target)} tokens, more than "
          f"target_len={o.target_len}; raise sampling.max_new_tokens",
        )
      example["target_ids"] = np.asarray(target, np.int32)
    return example


def _skip(message: str, kind: str, reason: str, data_pass: int) -> dict:
  return {
    "skipped": message,
    "kind": kind,
    "reason": errors.reason_key(reason),
    "pass": data_pass,
  }


def source_name(source: Any) -> str:
  """The data a source reads, for messages: its file(s), else its repr."""
  inner = source
  while hasattr(inner, "source") and not isinstance(inner.source, str):
    inner = inner.source  # SftView, eval's RepeatedSource, _ReadGuard
  for attr in ("path", "json_path"):
    value = getattr(inner, attr, None)
    if value:
      return f"data file {value}"
  files = list(getattr(inner, "files", None) or ())
  if len(files) == 1:
    return f"data file {files[0]}"
  if files:
    more = f" and {len(files) - 2} more" if len(files) > 2 else ""
    return f"data files {', '.join(str(f) for f in files[:2])}{more}"
  return f"data source {inner!r}"


def _load_skips(source: Any) -> dict[str, int]:
  """{reason key: count} of the records `source` dropped when it was built
  (`BadRecordError`s in sources.py, (where, reason) pairs in readers)."""
  reasons = [
    e.reason if isinstance(e, errors.BadRecordError) else str(e[-1])
    for e in getattr(source, "skipped", ())
  ]
  return errors.count_reasons(reasons)


def skip_counts(iterator: Any) -> dict[str, int]:
  """{reason key: count} of every record skipped so far by a pipeline
  iterator: dropped when the source was built and when read or decoded
  (each time it is read, so once per pass)."""
  stats = getattr(iterator, "stats", None)
  if stats is None:
    return {}
  counts = dict(stats.load_skipped_by_reason)
  for key, n in stats.skipped_by_reason.items():
    counts[key] = counts.get(key, 0) + n
  return errors.most_common_first(counts)


def skip_metrics(iterator: Any) -> dict[str, float]:
  """Skip totals of a pipeline iterator as metrics: `data_skipped` (all
  records skipped so far, load time included) and `data_skipped_<reason>`
  per reason key (`errors.reason_key`), for metrics.jsonl."""
  stats = getattr(iterator, "stats", None)
  if stats is None:
    return {}
  counts = skip_counts(iterator)
  out = {"data_skipped": float(stats.load_skipped + stats.num_skipped)}
  out.update({f"data_skipped_{k}": float(n) for k, n in counts.items()})
  return out


def _default_prompt_fn(tokenizer: Any, think_tag: str) -> PromptFn:
  from stepjax.data import tokenizer as tokenizer_lib

  return tokenizer_lib.prompt_builder(tokenizer, think_tag)


def _default_completion_fn(think_tag: str) -> CompletionFn:
  from stepjax.data import tokenizer as tokenizer_lib

  return functools.partial(tokenizer_lib.format_completion, think_tag=think_tag)


def _process_shard(
  shard_index: int | None, shard_count: int | None
) -> tuple[int, int]:
  if shard_index is not None and shard_count is not None:
    return shard_index, shard_count
  import jax  # Lazily: building a pipeline for inspection needs no jax.

  return jax.process_index(), jax.process_count()


def make_dataset(
  source: Any,
  tokenizer: Any,
  opts: PipelineOptions,
  *,
  prompt_fn: PromptFn | None = None,
  completion_fn: CompletionFn | None = None,
  think_tag: str = "think",
  shard_index: int | None = None,
  shard_count: int | None = None,
) -> grain.IterDataset:
  """Builds the batched dataset for this process; `iter()` it to read.

  Args:
    source: a Grain random-access source of `records.Record`s.
    tokenizer: a `PreTrainedTokenizerFast` with pad and eos tokens.
    opts: pipeline options (`PipelineOptions.from_config(config)`).
    prompt_fn: (question, num_image_tokens) -> prompt text; defaults to
      `stepjax.data.tokenizer.prompt_builder(tokenizer, think_tag)` (the
      tokenizer's chat template when it has one).
    completion_fn: (steps, answer) -> completion text for SFT targets;
      defaults to `stepjax.data.tokenizer.format_completion`.
    shard_index, shard_count: this process's slice; default
      `jax.process_index()` / `jax.process_count()`.

  Raises:
    ValueError: a setting is inconsistent (named by its config key).
  """
  sources.check_on_bad_record(opts.on_bad_record)
  index, count = _process_shard(shard_index, shard_count)
  if opts.batch_size % count:
    raise InputError(
      f"data.batch_size={opts.batch_size} is not divisible by the "
      f"{count} JAX processes"
    )
  if not opts.token_buckets or not opts.patch_buckets:
    raise InputError("data.token_buckets and data.patch_buckets must be set")
  if len(source) == 0:
    load_skips = _load_skips(source)
    if load_skips:
      raise errors.AllRecordsSkippedError(
        source_name(source), sum(load_skips.values()), load_skips
      )
    raise InputError(f"data source {source!r} has no records")
  if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
    raise InputError("the tokenizer needs a pad and an eos token")
  prompt_fn = prompt_fn or _default_prompt_fn(tokenizer, think_tag)
  if opts.target_len and completion_fn is None:
    completion_fn = _default_completion_fn(think_tag)

  ds = grain.MapDataset.source(_ReadGuard(source, opts.on_bad_record))
  if opts.shuffle:
    ds = ds.shuffle(seed=opts.seed)
  if opts.num_epochs != 1:
    ds = ds.repeat(opts.num_epochs)
  # Mapped before the slice (lazily: only this process's positions are
  # prepared) so that each example knows its pass over the source.
  ds = ds.map_with_index(
    _Prepare(opts, tokenizer, prompt_fn, completion_fn, len(source))
  )
  ds = ds[index::count]
  it_ds = ds.to_iter_dataset(
    grain.ReadOptions(
      num_threads=opts.read_threads,
      prefetch_buffer_size=max(2 * opts.batch_size, 1),
    )
  )
  if opts.num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # Grain's workers read absl flags; outside an absl app (notebooks,
      # tests) nothing parsed them, so use their defaults.
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=opts.num_workers)
    )
  collate_fn = functools.partial(
    batching.collate, opts=opts, pad_id=int(tokenizer.pad_token_id)
  )
  return batching.BatchDataset(
    it_ds,
    opts.batch_size // count,
    opts.drop_remainder,
    collate_fn,
    _load_skips(source),
    source_name(source),
    (index, count),
  )
