"""Host-side batch assembly: pipeline batches -> model and update inputs.

Shapes: P prompts, G samples each, B = P * G rows, T prompt tokens, C
completion (or SFT target) tokens, L = T + C, M image slots per prompt, I =
P * M slots (`image_prompt_I`: `stepjax/image_slots.py`), N patch rows,
P_ = 1176.

A sequence is the left-padded prompt followed by the right-padded
completion, so every prompt ends at column T - 1 and M-RoPE positions of
the completion continue from the prompt's, exactly as during sampling.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from stepjax import image_slots
from stepjax.data import records, synthmed
from stepjax.errors import InputError
from stepjax.models import config as config_lib
from stepjax.models import rope_index, vision_index


def vision_inputs(
  batch: dict[str, Any], cfg: config_lib.ModelConfig
) -> dict[str, Any]:
  """The I image slots of `batch`'s P prompts: pixels_IxNxP, their vision
  metadata and image_prompt_I (encoded once per prompt; `steps.decode`
  gives each of a prompt's G rows its slots)."""
  pixels = batch["pixels_IxNxP"]
  owner = image_slots.check(
    batch["image_prompt_I"], batch["prompt_ids_BxT"].shape[0]
  )
  meta = vision_index.vision_metadata(
    batch["grid_thw_Ix3"], pixels.shape[1], cfg.vision
  )
  return {"pixels_IxNxP": pixels, "vision_meta": meta, "image_prompt_I": owner}


def sequences(
  prompt_ids_PxT: np.ndarray,
  prompt_mask_PxT: np.ndarray,
  completion_ids_BxC: np.ndarray,
  completion_mask_BxC: np.ndarray,
  grid_thw_Ix3: np.ndarray,
  image_prompt_I: np.ndarray,
  cfg: config_lib.ModelConfig,
  group_size: int,
) -> dict[str, np.ndarray]:
  """Full sequences of B = P * G rows with their M-RoPE positions (row
  p * G + g reads prompt p's image slots, found by `image_prompt_I`).

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
  slots, _ = image_slots.group(
    np.asarray(image_prompt_I), prompt_ids_PxT.shape[0], g
  )
  grids = np.asarray(grid_thw_Ix3)[slots]
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
    batch["grid_thw_Ix3"],
    batch["image_prompt_I"],
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
  `sequences` (row p * G + g = prompt p, sample g) plus the P prompts'
  image slots (`vision_inputs`)."""
  out = sequences(
    batch["prompt_ids_BxT"],
    batch["prompt_mask_BxT"],
    completion_ids_BxC,
    completion_mask_BxC,
    batch["grid_thw_Ix3"],
    batch["image_prompt_I"],
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
    return dataclasses.replace(
      record,
      answer=str(meta.get("sft_answer", record.answer)),
      rationale=str(meta["sft_rationale"]),
    )

  def __repr__(self) -> str:
    return f"SftView({self.source!r})"


def micro_batches(update: dict, num: int, group_size: int):
  """Splits B rows into `num` micro-batches of whole groups; each takes
  its prompts' image slots along (`image_slots.take_prompts`)."""
  if num <= 1:
    yield update
    return
  b = update["ids_BxL"].shape[0]
  if b % (num * group_size):
    raise InputError(
      f"--config.optim.grad_accum={num}: {b} completions cannot be split "
      f"into {num} micro-batches of whole groups of {group_size}"
    )
  prompts = b // group_size // num
  for i in range(num):
    yield image_slots.take_prompts(
      update,
      np.arange(i * prompts, (i + 1) * prompts),
      b // group_size,
      group_size,
    )
