"""Host-side batch assembly: pipeline batches -> model and update inputs.

Shapes: P prompts, G samples each, B = P * G rows, T prompt tokens, C
completion (or SFT target) tokens, L = T + C, N patch rows, P_ = 1176.

A sequence is the left-padded prompt followed by the right-padded
completion, so every prompt ends at column T - 1 and M-RoPE positions of
the completion continue from the prompt's, exactly as during sampling.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from stepjax.data import records, synthmed
from stepjax.errors import InputError
from stepjax.models import config as config_lib
from stepjax.models import rope_index, vision_index


def vision_inputs(
  batch: dict[str, Any], cfg: config_lib.ModelConfig
) -> dict[str, Any]:
  """pixels_IxNxP and the vision metadata of the P images of `batch`."""
  pixels = batch["pixels_BxNxP"]
  meta = vision_index.vision_metadata(
    batch["grid_thw_Bx3"], pixels.shape[1], cfg.vision
  )
  return {"pixels_IxNxP": pixels, "vision_meta": meta}


def sequences(
  prompt_ids_PxT: np.ndarray,
  prompt_mask_PxT: np.ndarray,
  completion_ids_BxC: np.ndarray,
  completion_mask_BxC: np.ndarray,
  grid_thw_Px3: np.ndarray,
  cfg: config_lib.ModelConfig,
  group_size: int,
) -> dict[str, np.ndarray]:
  """Full sequences of B = P * G rows with their M-RoPE positions.

  Returns ids_BxL, mask_BxL, positions_3xBxL and loss_mask_BxL (1 on
  the real completion tokens).
  """
  g = group_size
  prompt_ids = np.repeat(prompt_ids_PxT, g, axis=0)
  prompt_mask = np.repeat(prompt_mask_PxT, g, axis=0)
  ids = np.concatenate([prompt_ids, completion_ids_BxC], axis=1).astype(
    np.int32
  )
  comp_mask = np.asarray(completion_mask_BxC).astype(np.int32)
  mask = np.concatenate([prompt_mask, comp_mask], axis=1).astype(np.int32)
  grids = np.repeat(np.asarray(grid_thw_Px3), g, axis=0)
  positions, _ = rope_index.rope_index(ids, mask, grids, cfg)
  loss_mask = np.concatenate([np.zeros_like(prompt_mask), comp_mask], axis=1)
  return {
    "ids_BxL": ids,
    "mask_BxL": mask,
    "positions_3xBxL": positions,
    "loss_mask_BxL": loss_mask.astype(np.int32),
  }


def sft_batch(
  batch: dict[str, Any], cfg: config_lib.ModelConfig
) -> dict[str, Any]:
  """Teacher-forcing inputs: prompt + gold completion (target tokens)."""
  out = sequences(
    batch["prompt_ids_BxT"],
    batch["prompt_mask_BxT"],
    batch["target_ids_BxS"],
    batch["target_mask_BxS"],
    batch["grid_thw_Bx3"],
    cfg,
    1,
  )
  out.update(vision_inputs(batch, cfg))
  if cfg.grounding_outputs > 0:
    pairs = [synthmed.finding_labels(m) for m in batch["metas"]]
    out["findings_BxF"] = np.stack([p[0] for p in pairs])
    out["findings_mask_BxF"] = np.stack([p[1] for p in pairs])
  return out


def rl_sequences(
  batch: dict[str, Any],
  completion_ids_BxC: np.ndarray,
  completion_mask_BxC: np.ndarray,
  cfg: config_lib.ModelConfig,
  group_size: int,
) -> dict[str, Any]:
  """Model inputs of G sampled completions per prompt of a pipeline batch:
  `sequences` (row p * G + g = prompt p, sample g) plus the P images."""
  out = sequences(
    batch["prompt_ids_BxT"],
    batch["prompt_mask_BxT"],
    completion_ids_BxC,
    completion_mask_BxC,
    batch["grid_thw_Bx3"],
    cfg,
    group_size,
  )
  out.update(vision_inputs(batch, cfg))
  return out


def pad_completion_arrays(
  arrays: dict[str, np.ndarray], prompt_len: int
) -> dict[str, np.ndarray]:
  """Prepends T prompt columns to completion-aligned [B, C] arrays.

  Prompt columns get 0 (advantages, log-probs) or -1 (step ids).
  """
  out = {}
  for name, x in arrays.items():
    fill = -1 if name.startswith("step_id") else 0
    pad = np.full((x.shape[0], prompt_len), fill, x.dtype)
    out[name] = np.concatenate([pad, x], axis=1)
  return out


def examples(batch: dict[str, Any]) -> list[dict[str, Any]]:
  """Per-prompt host info (for rewards and process labels)."""
  return [
    {
      "id": batch["ids"][i],
      "question": batch["questions"][i],
      "answer": batch["answers"][i],
      "rationale": batch["rationales"][i],
      "meta": batch["metas"][i],
      "image": batch.get("images", [None] * len(batch["ids"]))[i],
    }
    for i in range(len(batch["ids"]))
  ]


class SftView:
  """A source whose records train SFT on `meta["sft_rationale"/"sft_answer"]`.

  SynthMed keeps the true answer and gold rationale in the record and puts
  the SFT target (a deliberately cascading rationale for a configured share
  of records) in meta; other datasets have no such keys and pass unchanged.
  """

  def __init__(self, source: Any):
    self.source = source
    self.skipped = getattr(source, "skipped", [])

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> records.Record:
    record = self.source[index]
    meta = record.meta or {}
    if "sft_rationale" not in meta:
      return record
    return records.Record(
      id=record.id,
      question=record.question,
      answer=str(meta.get("sft_answer", record.answer)),
      image=record.image,
      rationale=str(meta["sft_rationale"]),
      dataset=record.dataset,
      origin=record.origin,
      meta=meta,
    )

  def __repr__(self) -> str:
    return f"SftView({self.source!r})"


def micro_batches(update: dict, num: int, group_size: int):
  """Splits B rows into `num` micro-batches of whole groups."""
  if num <= 1:
    yield update
    return
  b = update["ids_BxL"].shape[0]
  if b % (num * group_size):
    raise InputError(
      f"--config.optim.grad_accum={num}: {b} completions cannot be split "
      f"into {num} micro-batches of whole groups of {group_size}"
    )
  rows = b // num
  prompts = rows // group_size
  for i in range(num):
    micro = {}
    for key, value in update.items():
      if key == "positions_3xBxL":
        micro[key] = value[:, i * rows : (i + 1) * rows]
      elif key in ("pixels_IxNxP",):
        micro[key] = value[i * prompts : (i + 1) * prompts]
      elif key == "vision_meta":
        lo, hi = i * prompts, (i + 1) * prompts
        micro[key] = jax.tree.map(lambda x, lo=lo, hi=hi: x[lo:hi], value)
      else:
        micro[key] = value[i * rows : (i + 1) * rows]
    yield micro
