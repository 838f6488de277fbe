"""Full sequences: a left-padded prompt followed by its completion.

Shapes: P prompts, G rows per prompt (a group's samples; 1 for SFT), B =
P * G rows (row p * G + g reads prompt p), T prompt columns, C completion
(or SFT target) columns, L = T + C, M image slots per prompt, I = P * M
slots (`stepjax/image_slots.py`).

Every prompt ends at column T - 1, so the completion starts at column T
in every row, and M-RoPE positions of the completion continue from the
prompt's exactly as during sampling. A `SequenceBatch` is what a
teacher-forced forward of the policy reads; the trainer's SFT and RL
batches (`train/batches.py`) wrap one. Two builders make the same arrays:
`build` on the host from token ids (SFT targets, benchmarks), and
`sampling.sampler.full_sequence` on the device from the sampler's output
(an RL step's completions, never copied to the host for it).
"""

from __future__ import annotations

import flax.struct
import jax
import numpy as np

from stepjax import image_slots, rows
from stepjax.models import config as config_lib
from stepjax.models import rope_index


@flax.struct.dataclass
class SequenceBatch:
  """B full sequences (numpy or jax arrays).

  ids_BxL: int32 prompt ids then completion ids (pad after a row's end).
  mask_BxL: int32 1 on real tokens (the prompt's, then the completion's up
    to and including its stop token).
  positions_3xBxL: int32 M-RoPE positions (0 on padding).
  loss_mask_BxL: int32 1 on the completion's real tokens (what trains).
  images: the P prompts' image slots, shared by each prompt's G rows
    (every device holds them whole: a `rows.replicated_field`); None for
    text-only prompts.
  """

  ids_BxL: jax.Array
  mask_BxL: jax.Array
  positions_3xBxL: jax.Array
  loss_mask_BxL: jax.Array
  images: image_slots.ImageSlots | None = rows.replicated_field(default=None)


def build(
  prompt_ids_PxT: np.ndarray,
  prompt_mask_PxT: np.ndarray,
  completion_ids_BxC: np.ndarray,
  completion_mask_BxC: np.ndarray,
  images: image_slots.ImageSlots,
  cfg: config_lib.ModelConfig,
  group_size: int,
) -> SequenceBatch:
  """The full sequences of B = P * G rows from host token ids: row p * G +
  g is prompt p then completion row p * G + g, its M-RoPE positions
  computed over the whole row (its prompt's slots found by
  `images.image_prompt_I`)."""
  g = group_size
  prompt_ids = np.repeat(prompt_ids_PxT, g, axis=0)
  prompt_mask = np.repeat(prompt_mask_PxT, g, axis=0)
  ids = np.concatenate([prompt_ids, completion_ids_BxC], axis=1).astype(
    np.int32
  )
  comp_mask = np.asarray(completion_mask_BxC).astype(np.int32)
  mask = np.concatenate([prompt_mask, comp_mask], axis=1).astype(np.int32)
  slots, _ = image_slots.group(
    np.asarray(images.image_prompt_I), prompt_ids_PxT.shape[0], g
  )
  grids = np.asarray(images.grid_thw_Ix3)[slots]
  positions, _ = rope_index.rope_index(ids, mask, grids, cfg)
  loss_mask = np.concatenate([np.zeros_like(prompt_mask), comp_mask], axis=1)
  return SequenceBatch(
    ids_BxL=ids,
    mask_BxL=mask,
    positions_3xBxL=positions,
    loss_mask_BxL=loss_mask.astype(np.int32),
    images=images,
  )
