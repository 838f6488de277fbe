"""Batching for the input pipeline: bucket padding and skip accounting.

`collate` pads prepared examples into the batch layout documented in
`stepjax.data.pipeline` (B examples, T prompt tokens, N patches, P = 1176
values per patch, S target tokens). `BatchDataset` is the Grain stage that
collects B good examples, turning the skip markers that the decode stage
emits under `data.on_bad_record="skip"` into counts in `PipelineStats` and
warnings; it runs in the main process (after any worker processes), so the
counts are complete and are saved and restored with the iterator state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from absl import logging

from stepjax.data import images

_MAX_RECENT = 20


@dataclasses.dataclass
class PipelineStats:
  """What an iterator has produced and dropped; restored with its state."""

  num_examples: int = 0
  num_batches: int = 0
  num_skipped: int = 0
  skipped_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
  recent_skips: list[str] = dataclasses.field(default_factory=list)
  load_skipped: int = 0  # dropped by the source when it was built

  def record_skip(self, kind: str, message: str) -> None:
    self.num_skipped += 1
    self.skipped_by_kind[kind] = self.skipped_by_kind.get(kind, 0) + 1
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
  """Pads prepared examples to the largest bucket among them (see top)."""
  b = len(examples)
  t = max(
    bucket_for(len(e["prompt_ids"]), opts.token_buckets) for e in examples
  )
  n = max(
    bucket_for(e["pixels_NxP"].shape[0], opts.patch_buckets) for e in examples
  )
  prompt_ids_BxT = np.full((b, t), pad_id, np.int32)
  prompt_mask_BxT = np.zeros((b, t), np.int32)
  pixels_BxNxP = np.zeros((b, n, images.PATCH_DIM), np.float32)
  patch_mask_BxN = np.zeros((b, n), np.int32)
  for i, e in enumerate(examples):
    length = len(e["prompt_ids"])
    prompt_ids_BxT[i, t - length :] = e["prompt_ids"]
    prompt_mask_BxT[i, t - length :] = 1
    num = e["pixels_NxP"].shape[0]
    pixels_BxNxP[i, :num] = e["pixels_NxP"]
    patch_mask_BxN[i, :num] = 1
  batch = {
    "prompt_ids_BxT": prompt_ids_BxT,
    "prompt_mask_BxT": prompt_mask_BxT,
    "pixels_BxNxP": pixels_BxNxP,
    "patch_mask_BxN": patch_mask_BxN,
    "grid_thw_Bx3": np.stack([e["grid_thw"] for e in examples]),
    "ids": [e["id"] for e in examples],
    "questions": [e["question"] for e in examples],
    "answers": [e["answer"] for e in examples],
    "rationales": [e["rationale"] for e in examples],
    "metas": [e["meta"] for e in examples],
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

  def __init__(self, parent, batch_size, drop_remainder, collate_fn, stats):
    super().__init__(parent)
    self._batch_size = batch_size
    self._drop_remainder = drop_remainder
    self._collate = collate_fn
    self.stats = stats

  def __next__(self) -> dict[str, Any]:
    examples = []
    while len(examples) < self._batch_size:
      try:
        item = next(self._parent)
      except StopIteration:
        if not examples or self._drop_remainder:
          raise
        break
      if "skipped" in item:
        self.stats.record_skip(item["kind"], item["skipped"])
        logging.warning(
          "skipping bad record (data.on_bad_record=skip; %d so far): %s",
          self.stats.num_skipped,
          item["skipped"],
        )
        continue
      examples.append(item)
    self.stats.num_examples += len(examples)
    self.stats.num_batches += 1
    return self._collate(examples)

  def get_state(self) -> dict[str, Any]:
    return {"inputs": self._parent.get_state(), "stats": self.stats.to_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["inputs"])
    self.stats = PipelineStats.from_state(state["stats"])


class BatchDataset(grain.IterDataset):
  def __init__(self, parent, batch_size, drop_remainder, collate_fn, skipped):
    super().__init__(parent)
    self._batch_size = batch_size
    self._drop_remainder = drop_remainder
    self._collate = collate_fn
    self._load_skipped = skipped

  def __iter__(self) -> BatchIterator:
    return BatchIterator(
      self._parent.__iter__(),
      self._batch_size,
      self._drop_remainder,
      self._collate,
      PipelineStats(load_skipped=self._load_skipped),
    )

  def __str__(self) -> str:
    return f"BucketBatch(batch_size={self._batch_size})"
