"""The trainer's batches: typed values whose fields know their row axis.

Shapes: P prompts, G samples each, B = P * G rows, T prompt tokens, C
completion (or SFT target) tokens, L = T + C, F grounding findings, M image
slots per prompt, I = P * M slots (`image_prompt_I`:
`stepjax/image_slots.py`), N patch rows, P_ = 1176.

A batch is a `flax.struct.dataclass` of arrays whose names give their row
axis (`stepjax/rows.py`): `rows.place` / `rows.local` split and gather it
over the mesh, `image_slots.take_prompts` cuts it into micro-batches of
whole groups; the image slots are a `rows.replicated_field`, so every
device holds them whole. Nothing lists keys.

  SftBatch     teacher forcing: a `sequences.SequenceBatch` of the gold
               targets (+ grounding labels), built on the host (`sft_batch`).
  UpdateBatch  an RL update: the sampled sequences (built on the device
               from the sampler's output, `rollout.sample`), per-token
               advantages and log-probs, the step-value head's labels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import numpy as np

from stepjax import image_slots, sequences
from stepjax.data import records, synthmed
from stepjax.errors import InputError
from stepjax.models import config as config_lib


@flax.struct.dataclass
class SftBatch:
  """Teacher-forcing inputs: prompt + gold completion (target tokens).

  seq: the B = P rows (G = 1) and their image slots.
  findings_BxF / findings_mask_BxF: float32 grounding labels of each
    scan's findings and which are known (`synthmed.finding_labels`); None
    unless the model has a grounding readout.
  """

  seq: sequences.SequenceBatch
  findings_BxF: jax.Array | None = None
  findings_mask_BxF: jax.Array | None = None


@flax.struct.dataclass
class ValueLabels:
  """What the step-value head trains on (RL), per token of the B rows.

  step_id_BxL: int32 0-based step of each completion token (-1 outside
    steps and on the T prompt columns).
  step_valid_BxL: int32 the process label of each token's step (0 outside).
  label_mask_B: int32 1 where the labels train the head.
  """

  step_id_BxL: jax.Array
  step_valid_BxL: jax.Array
  label_mask_B: jax.Array


@flax.struct.dataclass
class UpdateBatch:
  """One RL update (`train/steps.py`), every per-token array aligned with
  `seq.ids_BxL` (the T prompt columns hold 0).

  seq: the B = P * G sampled sequences and the P prompts' image slots.
  adv_BxL: float32 per-token advantages (`steps.prepare_update`).
  old_logp_BxL: float32 the sampler's log-prob of each completion token
    (read when rl.num_iterations > 1).
  ref_logp_BxL: float32 the reference policy's log-probs
    (`steps.prepare_update`; read when rl.beta > 0).
  value_labels: the step-value head's labels (read when it trains).
  A field the update needs but the batch lacks is named by `steps.rl_loss`.
  """

  seq: sequences.SequenceBatch
  adv_BxL: jax.Array | None = None
  old_logp_BxL: jax.Array | None = None
  ref_logp_BxL: jax.Array | None = None
  value_labels: ValueLabels | None = None


def sft_batch(batch: dict[str, Any], cfg: config_lib.ModelConfig) -> SftBatch:
  """Teacher-forcing inputs of a pipeline batch (host numpy): each prompt
  followed by its gold completion (`target_ids_BxS`)."""
  num = batch["prompt_ids_BxT"].shape[0]
  seq = sequences.build(
    batch["prompt_ids_BxT"],
    batch["prompt_mask_BxT"],
    batch["target_ids_BxS"],
    batch["target_mask_BxS"],
    image_slots.from_batch(batch, num, cfg),
    cfg,
    1,
  )
  if cfg.grounding_outputs <= 0:
    return SftBatch(seq=seq)
  pairs = [synthmed.finding_labels(m) for m in batch["metas"]]
  return SftBatch(
    seq=seq,
    findings_BxF=np.stack([p[0] for p in pairs]),
    findings_mask_BxF=np.stack([p[1] for p in pairs]),
  )


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


def micro_batches(update: Any, num: int, group_size: int):
  """Splits an `UpdateBatch` of B host rows into `num` micro-batches of
  whole groups; each takes its prompts' image slots along
  (`image_slots.take_prompts`: every field by its row letter)."""
  if num <= 1:
    yield update
    return
  b = update.seq.ids_BxL.shape[0]
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
