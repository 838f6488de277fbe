"""Batching for the input pipeline: bucket padding and skip accounting.

`collate` pads prepared examples into the batch layout documented in
`stepjax.data.pipeline` (B examples, T prompt tokens, M image slots per
example, I = B * M, N patches, P = `opts.image_spec.patch_dim` values per
patch, S target tokens).
`BatchDataset` is the Grain stage that collects B good examples, turning
the skip markers that the decode stage emits under
`data.on_bad_record="skip"` into counts in `PipelineStats` (by kind and by
reason key); it runs in the main process (after any worker processes), so
the counts are complete and are saved and restored with the iterator
state. The first few skips are logged one by one, then one line
per pass over the data sums them up. A pass that keeps no record raises
`errors.AllRecordsSkippedError` (a repeating iterator would otherwise read
bad records forever, and evaluation would see no data).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from absl import logging

from stepjax.data import errors

_MAX_RECENT = 20
_LOGGED_SKIPS = 5  # skips logged one by one; later ones only per pass


@dataclasses.dataclass
class PipelineStats:
  """What an iterator has produced and dropped; restored with its state."""

  num_examples: int = 0
  num_batches: int = 0
  num_skipped: int = 0
  skipped_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
  recent_skips: list[str] = dataclasses.field(default_factory=list)
  load_skipped: int = 0  # dropped by the source when it was built
  # Reason key (errors.reason_key) -> count, when read and at load time.
  skipped_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
  load_skipped_by_reason: dict[str, int] = dataclasses.field(
    default_factory=dict
  )
  # The pass over the source in progress: records kept, skips by reason,
  # the first skip's message.
  pass_index: int = 0
  pass_kept: int = 0
  pass_skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  pass_first_skip: str = ""
  # Consecutive finished passes that kept nothing, and their skips.
  empty_passes: int = 0
  empty_skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  empty_first_skip: str = ""

  def record_skip(self, kind: str, message: str, reason: str = "") -> None:
    self.num_skipped += 1
    self.skipped_by_kind[kind] = self.skipped_by_kind.get(kind, 0) + 1
    reason = reason or kind
    self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + 1
    self.pass_skipped[reason] = self.pass_skipped.get(reason, 0) + 1
    if not self.pass_first_skip:
      self.pass_first_skip = message
    self.recent_skips = (self.recent_skips + [message])[-_MAX_RECENT:]

  def summary(self) -> str:
    return (
      f"{self.num_examples} examples in {self.num_batches} batches; "
      f"skipped {self.num_skipped} at decode {self.skipped_by_kind} and "
      f"{self.load_skipped} at load"
    )

  def to_state(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_state(cls, state: dict[str, Any]) -> PipelineStats:
    return cls(**state)


def bucket_for(size: int, buckets: Sequence[int]) -> int | None:
  """The smallest bucket holding `size`, or None if none does."""
  fits = [b for b in buckets if b >= size]
  return min(fits) if fits else None


def collate(
  examples: Sequence[dict[str, Any]], opts: Any, pad_id: int
) -> dict[str, Any]:
  """Pads prepared examples to the largest bucket among them (see top);
  each prompt gets `opts.max_images` image slots, its images first."""
  b, m = len(examples), int(getattr(opts, "max_images", 1))
  t = max(
    bucket_for(len(e["prompt_ids"]), opts.token_buckets) for e in examples
  )
  n = max(
    bucket_for(x.shape[0], opts.patch_buckets)
    for e in examples
    for x in e["pixels"]
  )
  prompt_ids_BxT = np.full((b, t), pad_id, np.int32)
  prompt_mask_BxT = np.zeros((b, t), np.int32)
  p = opts.image_spec.patch_dim
  widths = {x.shape[1] for e in examples for x in e["pixels"]}
  if widths != {p}:
    raise ValueError(
      f"patch rows of width {sorted(widths)} in a batch for an image spec "
      f"with patch_dim {p}; preprocess with the same images.ImageSpec as "
      "the pipeline options"
    )
  most = max(len(e["pixels"]) for e in examples)
  if most > m:
    raise ValueError(
      f"an example has {most} images but the batch has {m} image slots "
      "per prompt; raise data.max_images"
    )
  pixels_IxNxP = np.zeros((b * m, n, p), np.float32)
  patch_mask_IxN = np.zeros((b * m, n), np.int32)
  grids = [np.asarray(g) for e in examples for g in e["grids"]]
  grid_thw_Ix3 = np.zeros((b * m, 3), np.result_type(*grids))
  for i, e in enumerate(examples):
    length = len(e["prompt_ids"])
    prompt_ids_BxT[i, t - length :] = e["prompt_ids"]
    prompt_mask_BxT[i, t - length :] = 1
    for k, (x, grid) in enumerate(zip(e["pixels"], e["grids"])):
      num = x.shape[0]
      pixels_IxNxP[i * m + k, :num] = x
      patch_mask_IxN[i * m + k, :num] = 1
      grid_thw_Ix3[i * m + k] = grid
  batch = {
    "prompt_ids_BxT": prompt_ids_BxT,
    "prompt_mask_BxT": prompt_mask_BxT,
    "pixels_IxNxP": pixels_IxNxP,
    "patch_mask_IxN": patch_mask_IxN,
    "grid_thw_Ix3": grid_thw_Ix3,
    "image_prompt_I": np.repeat(np.arange(b, dtype=np.int32), m),
    "ids": [e["id"] for e in examples],
    "questions": [e["question"] for e in examples],
    "answers": [e["answer"] for e in examples],
    "rationales": [e["rationale"] for e in examples],
    "metas": [e["meta"] for e in examples],
    "images": [e.get("image") for e in examples],
  }
  if opts.target_len:
    s = opts.target_len
    target_ids_BxS = np.full((b, s), pad_id, np.int32)
    target_mask_BxS = np.zeros((b, s), np.int32)
    for i, e in enumerate(examples):
      length = len(e["target_ids"])
      target_ids_BxS[i, :length] = e["target_ids"]
      target_mask_BxS[i, :length] = 1
    batch["target_ids_BxS"] = target_ids_BxS
    batch["target_mask_BxS"] = target_mask_BxS
  return batch


class BatchIterator(grain.DatasetIterator):
  """Collects B good examples, counting and logging skip markers."""

  def __init__(
    self,
    parent,
    batch_size,
    drop_remainder,
    collate_fn,
    stats,
    name="",
    shard=(0, 1),
  ):
    super().__init__(parent)
    self._batch_size = batch_size
    self._drop_remainder = drop_remainder
    self._collate = collate_fn
    self._name = name or "data"
    self._shard = shard
    self.stats = stats

  def __next__(self) -> dict[str, Any]:
    examples = []
    while len(examples) < self._batch_size:
      try:
        item = next(self._parent)
      except StopIteration:
        self._end_pass(last=True)
        if not examples or self._drop_remainder:
          raise
        break
      data_pass = item.get("pass", self.stats.pass_index)
      if data_pass != self.stats.pass_index:
        self._end_pass()
        self.stats.pass_index = data_pass
      if "skipped" in item:
        self._skip(item)
        continue
      self.stats.pass_kept += 1
      examples.append(item)
    self.stats.num_examples += len(examples)
    self.stats.num_batches += 1
    return self._collate(examples)

  def _skip(self, item: dict[str, Any]) -> None:
    s = self.stats
    s.record_skip(item["kind"], item["skipped"], item.get("reason", ""))
    if s.num_skipped <= _LOGGED_SKIPS:
      later = "; later ones are summed up per pass"
      logging.warning(
        "skipping bad record (data.on_bad_record=skip; %d so far%s): %s",
        s.num_skipped,
        later if s.num_skipped == _LOGGED_SKIPS else "",
        item["skipped"],
      )

  def _end_pass(self, last: bool = False) -> None:
    """Closes the pass in progress: one summary line if it skipped records;
    `AllRecordsSkippedError` if it kept none (see `_check_empty`)."""
    s = self.stats
    skipped = sum(s.pass_skipped.values())
    if skipped and not s.pass_kept:
      self._check_empty(last)
    elif s.pass_kept:
      s.empty_passes, s.empty_skipped, s.empty_first_skip = 0, {}, ""
    if skipped:
      logging.warning(
        "%s: pass %d over the data kept %d records and skipped %d (%s); "
        "%d skipped so far in this run (data.on_bad_record=skip)",
        self._name,
        s.pass_index + 1,
        s.pass_kept,
        skipped,
        errors.describe_counts(s.pass_skipped),
        s.num_skipped,
      )
    s.pass_kept, s.pass_skipped, s.pass_first_skip = 0, {}, ""

  def _check_empty(self, last: bool) -> None:
    """Raises `AllRecordsSkippedError` after a pass that kept nothing.

    With one process, one such pass means every record is bad. With P
    processes each reads 1/P of a pass, so it takes P passes in a row that
    kept nothing (as many records as one whole pass; the share differs each
    pass when shuffled, and never changes when not, when this process could
    never make a batch), or the end of the data.
    """
    s = self.stats
    s.empty_passes += 1
    for key, n in s.pass_skipped.items():
      s.empty_skipped[key] = s.empty_skipped.get(key, 0) + n
    s.empty_first_skip = s.empty_first_skip or s.pass_first_skip
    index, count = self._shard
    if s.empty_passes < count and not last:
      return
    counts = dict(s.empty_skipped)
    for key, n in s.load_skipped_by_reason.items():
      counts[key] = counts.get(key, 0) + n
    first = s.pass_index + 2 - s.empty_passes
    when = f" read in pass {first}"
    if s.empty_passes > 1:
      when = f" read in passes {first}-{s.pass_index + 1}"
    when += " over the data"
    if count > 1:
      when += f" by process {index} of {count}"
    raise errors.AllRecordsSkippedError(
      self._name,
      sum(counts.values()),
      counts,
      first=s.empty_first_skip,
      when=when,
    )

  def get_state(self) -> dict[str, Any]:
    return {"inputs": self._parent.get_state(), "stats": self.stats.to_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["inputs"])
    load_reasons = self.stats.load_skipped_by_reason
    self.stats = PipelineStats.from_state(state["stats"])
    if "load_skipped_by_reason" not in state["stats"]:  # older checkpoints
      self.stats.load_skipped_by_reason = load_reasons


class BatchDataset(grain.IterDataset):
  """Batches of B good examples; `load_skips` ({reason key: count}) are the
  records the source dropped when built, `name` says what data it reads,
  `shard` is (this process, process count)."""

  def __init__(
    self,
    parent,
    batch_size,
    drop_remainder,
    collate_fn,
    load_skips,
    name="",
    shard=(0, 1),
  ):
    super().__init__(parent)
    self._batch_size = batch_size
    self._drop_remainder = drop_remainder
    self._collate = collate_fn
    self._load_skips = dict(load_skips)
    self._name = name
    self._shard = shard

  def __iter__(self) -> BatchIterator:
    return BatchIterator(
      self._parent.__iter__(),
      self._batch_size,
      self._drop_remainder,
      self._collate,
      PipelineStats(
        load_skipped=sum(self._load_skips.values()),
        load_skipped_by_reason=dict(self._load_skips),
      ),
      self._name,
      self._shard,
    )

  def __str__(self) -> str:
    return f"BucketBatch(batch_size={self._batch_size})"
