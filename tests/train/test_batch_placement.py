"""Typed batches are placed, gathered and micro-batched by their types.

An `UpdateBatch` of P = 4 prompts x G = 2 rows (B = 8) with M = 2 image
slots per prompt (I = 8), every array filled with its row (or slot)
number, on 8 simulated devices: the per-row fields are split one row per
device, the image slots (`rows.replicated_field`) are whole on every
device, and micro-batches of whole groups take their prompts' slots along.
No key lists: the fields' names and metadata say it all.
"""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from stepjax import image_slots, rows, sequences
from stepjax.models import config as config_lib
from stepjax.models import vision_index
from stepjax.train import batches, sharding

NUM_P, G, M, N, L = 4, 2, 2, 4, 6
B, SLOTS = NUM_P * G, NUM_P * M


def _update() -> batches.UpdateBatch:
  """Host arrays whose entries are their row (slot) number."""
  row_BxL = np.repeat(np.arange(B, dtype=np.int32)[:, None], L, axis=1)
  grid = np.tile(np.array([[1, 2, 2], [0, 0, 0]], np.int32), (NUM_P, 1))
  vision = config_lib.ModelConfig.tiny().vision
  images = image_slots.ImageSlots(
    pixels_IxNxP=np.broadcast_to(
      np.arange(SLOTS, dtype=np.float32)[:, None, None], (SLOTS, N, 3)
    ).copy(),
    grid_thw_Ix3=grid,
    vision_meta=vision_index.vision_metadata(grid, N, vision),
    image_prompt_I=np.repeat(np.arange(NUM_P, dtype=np.int32), M),
  )
  seq = sequences.SequenceBatch(
    ids_BxL=row_BxL,
    mask_BxL=row_BxL + 100,
    positions_3xBxL=np.stack([row_BxL] * 3),
    loss_mask_BxL=row_BxL + 200,
    images=images,
  )
  return batches.UpdateBatch(
    seq=seq,
    adv_BxL=row_BxL.astype(np.float32),
    old_logp_BxL=-row_BxL.astype(np.float32),
    value_labels=batches.ValueLabels(
      step_id_BxL=row_BxL + 300,
      step_valid_BxL=row_BxL + 400,
      label_mask_B=np.arange(B, dtype=np.int32),
    ),
  )


def _leaves(tree):
  return {
    jax.tree_util.keystr(k): v
    for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _is_image_leaf(key: str) -> bool:
  return key.startswith(".seq.images")


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() == 8
  return sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})


def test_fields_know_their_placement():
  update = _update()
  found = {
    jax.tree_util.keystr(path): rows.is_replicated(update, path)
    for path, _ in jax.tree_util.tree_flatten_with_path(update)[0]
  }
  assert found[".seq.images.pixels_IxNxP"]
  assert found[".seq.images.vision_meta.perm_IxN"]
  assert found[".seq.images.image_prompt_I"]
  assert not found[".seq.ids_BxL"] and not found[".value_labels.label_mask_B"]
  assert sum(found.values()) == len(jax.tree.leaves(update.seq.images))
  # A field left None is no leaf: nothing to place.
  assert update.ref_logp_BxL is None and ".ref_logp_BxL" not in found
  # Without the field metadata the same names are split by row.
  plain = {"pixels_IxNxP": update.seq.images.pixels_IxNxP}
  path = jax.tree_util.tree_flatten_with_path(plain)[0][0][0]
  assert not rows.is_replicated(plain, path)


def test_placement_splits_rows_and_replicates_image_slots(mesh):
  update = _update()
  placed = sharding.place_batch(update, mesh)
  assert placed.ref_logp_BxL is None
  host = _leaves(update)
  for key, x in _leaves(placed).items():
    assert x.shape == host[key].shape, key
    if _is_image_leaf(key):  # every device holds every prompt's slots
      assert x.sharding.is_fully_replicated, key
      for shard in x.addressable_shards:
        np.testing.assert_array_equal(shard.data, host[key], err_msg=key)
      continue
    axis = rows.row_axis(key.rsplit(".", 1)[-1])
    shards = x.addressable_shards
    assert len({s.device for s in shards}) == 8, key
    for shard in shards:  # one row per device: its own row number
      assert shard.data.shape[axis] == 1, key
      row = shard.index[axis].start
      want = np.take(host[key], [row], axis=axis)
      np.testing.assert_array_equal(shard.data, want, err_msg=key)
  # And back: this process's rows, numbered from its first prompt.
  back = _leaves(sharding.local_batch(placed, mesh))
  assert back.keys() == host.keys()
  for key, x in back.items():
    assert isinstance(x, np.ndarray), key
    np.testing.assert_array_equal(x, host[key], err_msg=key)


def test_constrain_inside_jit_follows_the_type(mesh):
  update = _update()
  placed = sharding.place_batch(update, mesh)
  out = jax.jit(lambda b: rows.constrain(b, mesh))(update)
  want = _leaves(placed)
  for key, x in _leaves(out).items():
    assert x.sharding.is_equivalent_to(want[key].sharding, x.ndim), key


def test_micro_batches_keep_each_prompts_images(mesh):
  """Two micro-batches of two prompts (4 rows, 4 slots) each from the
  placed batch's host copy; each placed again on 4 row shards."""
  placed = sharding.place_batch(_update(), mesh)
  host = sharding.local_batch(placed, mesh)
  micros = list(batches.micro_batches(host, 2, G))
  assert len(micros) == 2
  small = sharding.make_mesh({"data": 4, "fsdp": 1, "tensor": 1})
  for i, micro in enumerate(micros):
    rows_i = np.arange(4 * i, 4 * i + 4)
    np.testing.assert_array_equal(micro.seq.ids_BxL[:, 0], rows_i)
    np.testing.assert_array_equal(micro.seq.positions_3xBxL[1, :, 0], rows_i)
    np.testing.assert_array_equal(micro.value_labels.label_mask_B, rows_i)
    images = micro.seq.images
    # Prompts 2i and 2i + 1 own slots 4i .. 4i + 3; numbered 0, 0, 1, 1.
    np.testing.assert_array_equal(images.pixels_IxNxP[:, 0, 0], rows_i)
    np.testing.assert_array_equal(images.image_prompt_I, [0, 0, 1, 1])
    np.testing.assert_array_equal(
      images.grid_thw_Ix3, host.seq.images.grid_thw_Ix3[rows_i]
    )
    again = sharding.place_batch(micro, small)
    assert again.seq.images.pixels_IxNxP.sharding.is_fully_replicated
    split = NamedSharding(small, P(rows.BATCH_AXES, None))
    assert again.seq.ids_BxL.sharding.is_equivalent_to(split, 2)
  with pytest.raises(ValueError, match="whole groups"):
    list(batches.micro_batches(host, 3, G))
