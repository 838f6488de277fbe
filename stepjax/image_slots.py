"""The prompt -> images index of a batch: which prompt each image slot serves.

Shapes: P prompts, M image slots per prompt (`data.max_images`), I = P * M
slots, Q prompts taken from a batch, G rows per prompt (a group's samples).

A batch holds its images in I slots (`pixels_IxNxP`, `patch_mask_IxN`,
`grid_thw_Ix3`, the vision metadata) and says in `image_prompt_I` (int32)
which prompt owns slot i. A prompt's images are its slots in slot order,
the order of its image placeholders; a slot it leaves unused is empty
(grid (0, 0, 0), no patch rows) and gives the model no image features.
Every prompt owns M slots and the slots are stored prompt by prompt (the
index never decreases), so:
  - a batch of P prompts has the same shapes whatever images its prompts
    hold (one compilation per bucket);
  - the images come in the model's reading order (row by row, then
    placeholder order), so the k-th image pad token of a batch meets the
    k-th real image feature;
  - splitting the prompts evenly over devices splits the slots with them:
    each prompt's images stay on its prompt's device.

Model inputs carry the slots as one `ImageSlots` value (the pixels, their
grids and vision metadata, and the index), built from a pipeline batch by
`from_batch`.

Whatever moves prompts moves their slots through the index (`take`):
padding a batch, a micro-batch of whole groups, the G copies of each
prompt that a group's rows see (`group`). Arrays gathered from several
processes renumber it (`for_process`, `global_numbering`;
`local_numbering` undoes it).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import numpy as np

from stepjax import rows
from stepjax.models import config as config_lib
from stepjax.models import vision_index


@flax.struct.dataclass
class ImageSlots:
  """The images of P prompts in I = P * M slots (numpy or jax arrays).

  pixels_IxNxP: float32 patch rows (rows past an image's patches are
    padding; an empty slot is all padding).
  grid_thw_Ix3: int32 (t, h, w) patch grid of each slot, (0, 0, 0) empty.
  vision_meta: `vision_index.VisionMeta` of those grids (encoder indices).
  image_prompt_I: int32 the prompt owning each slot (the module doc).
  """

  pixels_IxNxP: jax.Array
  grid_thw_Ix3: jax.Array
  vision_meta: vision_index.VisionMeta
  image_prompt_I: jax.Array


def from_batch(
  batch: dict[str, Any], num_prompts: int, cfg: config_lib.ModelConfig
) -> ImageSlots | None:
  """The image slots of a pipeline-layout batch of `num_prompts` prompts
  (host numpy; None when it holds no `pixels_IxNxP`): its pixels_IxNxP,
  grid_thw_Ix3, image_prompt_I (`check`ed) and, when given,
  patch_mask_IxN (checked against the grids), plus their vision metadata.

  Raises:
    ValueError: the arrays disagree; the message says which and how.
  """
  pixels = batch.get("pixels_IxNxP")
  if pixels is None:
    return None
  if batch.get("grid_thw_Ix3") is None or batch.get("image_prompt_I") is None:
    raise ValueError("pixels_IxNxP needs grid_thw_Ix3 and image_prompt_I")
  pixels = np.asarray(pixels, np.float32)
  grid = np.asarray(batch["grid_thw_Ix3"]).reshape(-1, 3)
  owner = check(batch["image_prompt_I"], num_prompts)
  if not pixels.shape[0] == grid.shape[0] == owner.shape[0]:
    raise ValueError(
      f"pixels_IxNxP {pixels.shape}, grid_thw_Ix3 {grid.shape} and "
      f"image_prompt_I {owner.shape} disagree on the image slots I"
    )
  _check_patches(batch.get("patch_mask_IxN"), grid)
  return ImageSlots(
    pixels_IxNxP=pixels,
    grid_thw_Ix3=grid.astype(np.int32),
    vision_meta=vision_index.vision_metadata(grid, pixels.shape[1], cfg.vision),
    image_prompt_I=owner,
  )


def _check_patches(patch_mask_IxN, grid_Ix3) -> None:
  if patch_mask_IxN is None:
    return
  want = vision_index.num_patches(grid_Ix3)
  have = np.asarray(patch_mask_IxN).astype(bool).sum(1)
  if not np.array_equal(want, have):
    raise ValueError(
      f"patch_mask_IxN counts {have.tolist()} patches but grid_thw_Ix3 "
      f"needs {want.tolist()}"
    )


def model_inputs(images: ImageSlots | None) -> dict[str, Any]:
  """The keyword arguments `vlm.forward` takes the images as (none for
  text-only inputs)."""
  if images is None:
    return {}
  return {
    "pixels_IxNxP": images.pixels_IxNxP,
    "vision_meta": images.vision_meta,
  }


def slots_per_prompt(image_prompt_I, num_prompts: int) -> int:
  """M: the slots each of `num_prompts` prompts owns (a static shape)."""
  return int(image_prompt_I.shape[0]) // max(int(num_prompts), 1)


def check(image_prompt_I: Any, num_prompts: int) -> np.ndarray:
  """The index as int32 numpy, after checking the layout the module doc
  describes (each of the P prompts owns M slots, stored prompt by prompt).

  Raises:
    ValueError: the index breaks that layout; the message says how.
  """
  owner = np.asarray(image_prompt_I)
  if owner.ndim != 1 or not np.issubdtype(owner.dtype, np.integer):
    raise ValueError(
      f"image_prompt_I must be a 1-D integer array (the prompt of each "
      f"image slot); got {owner.dtype} of shape {owner.shape}"
    )
  p = int(num_prompts)
  m = slots_per_prompt(owner, p)
  want = np.repeat(np.arange(p), m)
  if m < 1 or owner.shape[0] != p * m or not np.array_equal(owner, want):
    raise ValueError(
      f"image_prompt_I {owner.tolist()} must give each of the {p} prompts "
      "the same number of image slots, prompt by prompt (e.g. "
      f"{np.repeat(np.arange(p), max(m, 1)).tolist()}); pad a prompt's "
      "unused slots with empty images (grid 0, 0, 0)"
    )
  return owner.astype(np.int32)


def take(image_prompt_I, prompts_Q, num_prompts: int, xp=np):
  """(slots_J, image_prompt_J): the slots of prompts_Q in that order (a
  prompt may repeat), J = Q * M, and their index renumbered so that
  prompt q of the result owns its slots. `xp` = numpy or jax.numpy (the
  index arrays may be traced: shapes depend only on Q and M)."""
  m = slots_per_prompt(image_prompt_I, num_prompts)
  q = prompts_Q.shape[0]
  first_Q = xp.searchsorted(image_prompt_I, prompts_Q, side="left")
  slots_QxM = first_Q[:, None] + xp.arange(m)[None, :]
  owner_J = xp.repeat(xp.arange(q, dtype=np.int32), m)
  return slots_QxM.reshape(-1).astype(np.int32), owner_J


def group(image_prompt_I, num_prompts: int, group_size: int, xp=np):
  """`take` of each prompt G times: the slots of the B = P * G rows
  (row b = p * G + g sees prompt p's images), owned by row number."""
  prompts_B = xp.repeat(xp.arange(int(num_prompts), dtype=np.int32), group_size)
  return take(image_prompt_I, prompts_B, num_prompts, xp)


def take_prompts(
  tree: Any,
  prompts_Q: np.ndarray,
  num_prompts: int,
  rows_per_prompt: int = 1,
  xp=np,
) -> Any:
  """The rows of prompts_Q (in that order) of a tree of named arrays
  (`rows.row_axis`): P rows one per prompt, B rows `rows_per_prompt` (G)
  per prompt, I image slots through `image_prompt_I` (which the result
  renumbers 0 .. Q-1). A tree without image slots needs no index. `xp` =
  numpy (host arrays) or jax.numpy (inside jit; prompts_Q stays static)."""
  prompts_Q = np.asarray(prompts_Q, np.int32)
  g = int(rows_per_prompt)
  rows_R = (prompts_Q[:, None] * g + np.arange(g)[None]).reshape(-1)
  slots_J = owner_J = None
  owner_I = _find_index(tree)
  if owner_I is not None:
    slots_J, owner_J = take(xp.asarray(owner_I), prompts_Q, num_prompts, xp)

  def pick(path, x):
    name = rows.leaf_name(path)
    if name == "image_prompt_I":
      return owner_J
    letter = rows.row_letter(name)
    index = {"P": prompts_Q, "B": rows_R, "I": slots_J}[letter]
    if index is None:
      raise ValueError(
        f"{name} holds image slots but there is no image_prompt_I"
      )
    return xp.take(xp.asarray(x), index, axis=rows.row_axis(name))

  return jax.tree_util.tree_map_with_path(pick, tree)


def _find_index(tree: Any):
  found = [
    x
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    if rows.leaf_name(path) == "image_prompt_I"
  ]
  return found[0] if found else None


def global_numbering(tree: Any, mesh: Any) -> Any:
  """`tree` with the index of every `ImageSlots` in it that is this
  process's own (not yet on `mesh`) numbered for the batch of all
  processes' prompts (`for_process`), as placing it on `mesh` needs."""

  def renumber(node):
    if not isinstance(node, ImageSlots) or rows.on_mesh(
      node.image_prompt_I, mesh
    ):
      return node
    return node.replace(image_prompt_I=for_process(node.image_prompt_I))

  return jax.tree.map(
    renumber, tree, is_leaf=lambda x: isinstance(x, ImageSlots)
  )


def local_numbering(tree: Any) -> Any:
  """`tree` with the index of every `ImageSlots` in it numbered from its
  first prompt (0): `global_numbering` undone on this process's share."""

  def renumber(node):
    if not isinstance(node, ImageSlots):
      return node
    owner = np.asarray(node.image_prompt_I)
    return node.replace(image_prompt_I=owner - (owner[:1] if owner.size else 0))

  return jax.tree.map(
    renumber, tree, is_leaf=lambda x: isinstance(x, ImageSlots)
  )


def for_process(image_prompt_I: Any, num_prompts: int | None = None):
  """This process's index renumbered for the batch that concatenates every
  process's prompts in process order: prompt p becomes process_index * P
  + p. Every process holds P prompts (`num_prompts`; by default the
  index's own count: prompts 0 .. P-1 each own slots)."""
  owner = np.asarray(image_prompt_I, np.int32)
  if jax.process_count() == 1 or owner.size == 0:
    return owner
  p = int(owner.max()) + 1 if num_prompts is None else int(num_prompts)
  return owner + np.int32(jax.process_index() * p)
