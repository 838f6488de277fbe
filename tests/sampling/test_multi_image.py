"""Several images per prompt through the sampler and the trainer's layout.

A tiny random Qwen2.5-VL (fp32, CPU) and four left-padded prompts in M = 2
image slots each: prompt 0 shows two images, prompt 1 one (its second slot
empty), prompt 2 two, prompt 3 one; G = 4 samples per prompt. The images
reach each row through `image_prompt_I` (`stepjax/image_slots.py`): the
sampler's log-probs equal a teacher-forced forward on the full sequences
and the trainer's own layout (`rollout.samples_of` -> `steps.
sequence_logp`); split over 8 simulated devices the samples equal the
unsplit ones token for token, each prompt's images on its prompt's device,
and the trainer's update batch holds every prompt's images on every
device.
"""

import types

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from stepjax import image_slots, rows, sequences
from stepjax.models import config as config_lib
from stepjax.models import vlm
from stepjax.sampling import sampler
from stepjax.train import batches, rollout, sharding, steps

SMALL, WIDE = [1, 4, 4], [1, 4, 8]
# Per prompt: (text tokens before, grids of its images, text tokens after).
PROMPTS = (
  (2, (SMALL, WIDE), 3),
  (5, (WIDE,), 2),
  (3, (WIDE, SMALL), 1),
  (1, (SMALL,), 4),
)
M = 2
N_ROWS = 32
G = 4
STEPS = 8
# Log-probs of the same tokens from forwards over differently split or
# composed batches: float32 reductions run in another order, so they agree
# to a few float32 ulps of the value (measured: up to 1.1e-5 absolute,
# 3.2e-6 relative, on log-probs near -3.5 on an AVX-512 Intel host).
TOL = dict(atol=1e-5, rtol=1e-5)


def _batch(cfg, prompts=PROMPTS, slots=M):
  """A pipeline-layout batch: images in `slots` slots per prompt."""
  rng = np.random.default_rng(0)
  seqs = []
  for before, grids, after in prompts:
    text = rng.integers(0, cfg.bos_token_id, before + after).tolist()
    runs = []
    for t, h, w in grids:
      pads = [cfg.image_pad_token_id] * (t * h * w // cfg.vision.merge_unit)
      runs += [cfg.vision_start_token_id, *pads, cfg.vision_end_token_id]
    seqs.append(text[:before] + runs + text[before:])
  p, t = len(seqs), max(len(s) for s in seqs)
  ids = np.full((p, t), cfg.pad_token_id, np.int32)
  mask = np.zeros((p, t), np.int32)
  grid = np.zeros((p * slots, 3), np.int32)
  for i, s in enumerate(seqs):
    ids[i, t - len(s) :], mask[i, t - len(s) :] = s, 1
    grid[i * slots : i * slots + len(prompts[i][1])] = prompts[i][1]
  patch_mask = np.arange(N_ROWS)[None] < np.prod(grid, 1)[:, None]
  pixels = rng.standard_normal((p * slots, N_ROWS, cfg.vision.patch_dim))
  return {
    "prompt_ids_BxT": ids,
    "prompt_mask_BxT": mask,
    "pixels_IxNxP": (pixels * patch_mask[..., None]).astype(np.float32),
    "patch_mask_IxN": patch_mask.astype(np.int32),
    "grid_thw_Ix3": grid,
    "image_prompt_I": np.repeat(np.arange(p, dtype=np.int32), slots),
  }


def _kwargs(cfg, **kw):
  out = dict(
    group_size=G,
    max_new_tokens=STEPS,
    temperature=1.0,
    eos_ids=(cfg.eos_token_id, 7),
    pad_id=cfg.pad_token_id,
  )
  out.update(kw)
  return out


@pytest.fixture(scope="module")
def setup():
  cfg = config_lib.ModelConfig.tiny().replace(initializer_range=0.2)
  graphdef, params = nnx.split(vlm.create(cfg, seed=2), nnx.Param)
  batch = _batch(cfg)
  prompt = sampler.prepare_inputs(batch, cfg)
  rng = jax.random.key(3)
  out = sampler.generate(graphdef, params, prompt, rng, **_kwargs(cfg))
  return dict(
    cfg=cfg,
    graphdef=graphdef,
    params=params,
    batch=batch,
    prompt=prompt,
    rng=rng,
    out=jax.device_get(out),
  )


@pytest.fixture(scope="module")
def trainer(setup):
  """(update, logp_fn): the trainer's layout of the samples and its jitted
  `steps.sequence_logp`."""
  s = setup
  update = rollout.samples_of(s["prompt"], s["out"], group_size=G).seq
  graphs = types.SimpleNamespace(policy=s["graphdef"], cfg=s["cfg"])
  fn = jax.jit(
    lambda params, b, t: steps.sequence_logp(graphs, params, b, G, t)[0],
    static_argnums=2,
  )
  return update, lambda b, t=0: np.asarray(fn(s["params"], b, t))


def test_logp_equals_teacher_forced_forward_and_trainer_layout(setup, trainer):
  s = setup
  out = s["out"]
  assert out.tokens_BxR.shape == (len(PROMPTS) * G, STEPS)
  assert out.mask_BxR.sum() > len(PROMPTS) * G  # real samples
  seq = sampler.full_sequence(s["prompt"], out, G)
  t = s["prompt"].prompt_ids_PxT.shape[1]
  # Each row reads its own copy of its prompt's slots (4 rows x 2 slots per
  # prompt; `repeat_group`).
  repeated = sampler.repeat_group(s["prompt"], G).images
  np.testing.assert_array_equal(
    repeated.image_prompt_I, np.repeat(np.arange(len(PROMPTS) * G), M)
  )
  forced = jax.jit(
    lambda params, seq: sampler.teacher_forced_logp(
      s["graphdef"], params, seq, G, t
    )
  )(s["params"], seq)
  diff = np.abs(np.asarray(forced) - out.logp_BxR)
  print(f"[multi-image] sampler vs teacher forced: max diff {diff.max():.3g}")
  np.testing.assert_allclose(np.asarray(forced), out.logp_BxR, **TOL)

  # The trainer's layout: images encoded once per prompt, its G rows read
  # their copies through image_prompt_I.
  update, logp_fn = trainer
  assert update.images.pixels_IxNxP.shape[0] == len(PROMPTS) * M
  # The host build (rope_index over whole rows) gives the same sequences.
  host = sequences.build(
    s["batch"]["prompt_ids_BxT"],
    s["batch"]["prompt_mask_BxT"],
    out.tokens_BxR,
    out.mask_BxR,
    image_slots.from_batch(s["batch"], len(PROMPTS), s["cfg"]),
    s["cfg"],
    G,
  )
  for x, y in zip(jax.tree.leaves(update), jax.tree.leaves(host)):
    np.testing.assert_array_equal(x, y)
  logp = np.where(out.mask_BxR > 0, logp_fn(update)[:, t - 1 :], 0.0)
  diff = np.abs(logp - out.logp_BxR)
  print(f"[multi-image] sampler vs trainer layout: max diff {diff.max():.3g}")
  np.testing.assert_allclose(logp, out.logp_BxR, **TOL)
  # The update's default: each prompt (with its two slots) run once per
  # group (`steps.shared_prompt_forward`).
  shared = np.where(out.mask_BxR > 0, logp_fn(update, t), 0.0)
  diff = np.abs(shared - out.logp_BxR)
  print(f"[multi-image] sampler vs shared-prompt layout: {diff.max():.3g}")
  np.testing.assert_allclose(shared, out.logp_BxR, **TOL)


def test_micro_batches_keep_each_rows_images(setup, trainer):
  """Two micro-batches of two prompts: each takes its prompts' slots and
  gives its rows the log-probs they have in the whole update."""
  update, logp_fn = trainer
  whole = logp_fn(update)
  host = jax.device_get(batches.UpdateBatch(seq=update))
  micros = list(batches.micro_batches(host, 2, G))
  for i, micro in enumerate(micros):
    images, want = micro.seq.images, update.images
    np.testing.assert_array_equal(images.image_prompt_I, [0, 0, 1, 1])
    np.testing.assert_array_equal(
      images.pixels_IxNxP, want.pixels_IxNxP[4 * i : 4 * i + 4]
    )
    np.testing.assert_array_equal(
      images.vision_meta.valid_IxM,
      want.vision_meta.valid_IxM[4 * i : 4 * i + 4],
    )
    rows_i = slice(2 * G * i, 2 * G * (i + 1))
    np.testing.assert_array_equal(micro.seq.ids_BxL, update.ids_BxL[rows_i])
    np.testing.assert_allclose(logp_fn(micro.seq), whole[rows_i], **TOL)


def test_unshared_prefill_gives_the_same_samples(setup):
  """share_prefix=False repeats each prompt's slots G times
  (`repeat_group`) before the prefill: same samples."""
  s = setup
  got = sampler.generate(
    s["graphdef"], s["params"], s["prompt"], s["rng"],
    **_kwargs(s["cfg"], share_prefix=False),
  )  # fmt: skip
  got = jax.device_get(got)
  np.testing.assert_array_equal(got.tokens_BxR, s["out"].tokens_BxR)
  np.testing.assert_allclose(got.logp_BxR, s["out"].logp_BxR, **TOL)


def test_empty_slot_changes_nothing(setup):
  """Prompt 1 (one image) sampled alone with one slot equals its rows in
  the two-slot batch: its empty slot gives the model nothing."""
  s = setup
  alone = _batch(s["cfg"], PROMPTS[1:2], slots=1)
  assert alone["pixels_IxNxP"].shape[0] == 1
  # The same image as slot 2 of the batch.
  alone["pixels_IxNxP"] = s["batch"]["pixels_IxNxP"][2:3]
  alone["prompt_ids_BxT"] = s["batch"]["prompt_ids_BxT"][1:2]
  alone["prompt_mask_BxT"] = s["batch"]["prompt_mask_BxT"][1:2]
  prompt = sampler.prepare_inputs(alone, s["cfg"])
  cfg = s["cfg"]
  greedy = dict(temperature=0.0, group_size=1)
  got = sampler.generate(
    s["graphdef"], s["params"], prompt, s["rng"], **_kwargs(cfg, **greedy)
  )
  whole = sampler.generate(
    s["graphdef"], s["params"], s["prompt"], s["rng"], **_kwargs(cfg, **greedy)
  )
  np.testing.assert_array_equal(got.tokens_BxR[0], whole.tokens_BxR[1])
  np.testing.assert_allclose(got.logp_BxR[0], whole.logp_BxR[1], **TOL)


def test_prompt_needs_its_images_tokens(setup):
  """A prompt whose pads do not match its slots' images is refused."""
  bad = dict(setup["batch"])
  del bad["patch_mask_IxN"]  # checked first; optional
  bad["grid_thw_Ix3"] = bad["grid_thw_Ix3"].copy()
  bad["grid_thw_Ix3"][1] = 0  # prompt 0 loses its second image
  with pytest.raises(ValueError, match="prompt 0 holds 12 image pad"):
    sampler.prepare_inputs(bad, setup["cfg"])


def test_split_over_eight_devices_equals_one(setup):
  s = setup
  assert jax.device_count() == 8
  cfg = s["cfg"]
  # One prompt per row shard: each device holds its prompt's two slots.
  mesh = sharding.make_mesh({"data": 4, "fsdp": 1, "tensor": 1})
  params = jax.device_put(
    s["params"], sharding.state_shardings(s["params"], mesh, ())
  )
  placed = rows.place(s["prompt"], mesh)
  for p_shard, i_shard in zip(
    placed.prompt_ids_PxT.addressable_shards,
    placed.images.pixels_IxNxP.addressable_shards,
  ):
    p_rows = p_shard.index[0]
    assert i_shard.device == p_shard.device
    assert i_shard.index[0] == slice(p_rows.start * M, p_rows.stop * M)
  got = sampler.generate(
    s["graphdef"], params, placed, s["rng"], mesh=mesh, **_kwargs(cfg)
  )
  got = jax.device_get(got)
  np.testing.assert_array_equal(got.tokens_BxR, s["out"].tokens_BxR)
  np.testing.assert_array_equal(got.mask_BxR, s["out"].mask_BxR)
  np.testing.assert_allclose(got.logp_BxR, s["out"].logp_BxR, **TOL)

  # Through the trainer's entry on all 8 devices: the 4 prompts are padded
  # to 8 (the last one repeated with its images), the padding dropped.
  mesh8 = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  graphs = types.SimpleNamespace(cfg=cfg, policy=s["graphdef"])
  tok_info = types.SimpleNamespace(
    stop_ids=(cfg.eos_token_id, 7), pad_id=cfg.pad_token_id
  )
  sampling = types.SimpleNamespace(max_new_tokens=STEPS, top_k=0, top_p=1.0)
  got8 = rollout.generate(
    graphs, tok_info, sampling, s["params"], s["batch"], s["rng"],
    group_size=G, temperature=1.0, mesh=mesh8,
  )  # fmt: skip
  np.testing.assert_array_equal(got8.tokens_BxR, s["out"].tokens_BxR)
  np.testing.assert_allclose(got8.logp_BxR, s["out"].logp_BxR, **TOL)

  # The trainer's `rollout.sample` there: the 4 prompts' 16 rows (the
  # padding prompts' rows dropped on the device) split by row, every
  # prompt's image slots whole on every device (the update encodes them
  # all), the same sequences as unsplit.
  policy = types.SimpleNamespace(
    graphs=graphs, tok_info=tok_info, params=s["params"], mesh=mesh8
  )
  samples = rollout.sample(
    policy, s["batch"], s["rng"], sampling, group_size=G, temperature=1.0
  )
  seq = samples.seq
  assert seq.ids_BxL.shape[0] == len(PROMPTS) * G
  split = NamedSharding(mesh8, P(rows.BATCH_AXES, None))
  assert seq.ids_BxL.sharding.is_equivalent_to(split, 2)
  split = NamedSharding(mesh8, P(None, rows.BATCH_AXES, None))
  assert seq.positions_3xBxL.sharding.is_equivalent_to(split, 3)
  assert all(
    x.sharding.is_fully_replicated for x in jax.tree.leaves(seq.images)
  )
  for shard in seq.images.pixels_IxNxP.addressable_shards:
    assert shard.data.shape == seq.images.pixels_IxNxP.shape
  want = rollout.samples_of(s["prompt"], s["out"], group_size=G)
  for x, y in zip(jax.tree.leaves(seq), jax.tree.leaves(want.seq)):
    np.testing.assert_array_equal(x, y)
  np.testing.assert_array_equal(samples.tokens_BxR, s["out"].tokens_BxR)
  np.testing.assert_allclose(samples.old_logp_BxL, want.old_logp_BxL, **TOL)


def test_take_prompts_moves_image_slots():
  owner = np.repeat(np.arange(3, dtype=np.int32), 2)
  tree = {
    "prompt_ids_BxT": np.arange(3)[:, None],
    "pixels_IxNxP": np.arange(6)[:, None, None],
    "image_prompt_I": owner,
  }
  got = image_slots.take_prompts(tree, [2, 0, 2], 3)
  np.testing.assert_array_equal(got["prompt_ids_BxT"][:, 0], [2, 0, 2])
  np.testing.assert_array_equal(
    got["pixels_IxNxP"][:, 0, 0], [4, 5, 0, 1, 4, 5]
  )
  np.testing.assert_array_equal(got["image_prompt_I"], [0, 0, 1, 1, 2, 2])
  slots, rows_owner = image_slots.group(owner, 3, 2)
  np.testing.assert_array_equal(slots, [0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5])
  np.testing.assert_array_equal(rows_owner, np.repeat(np.arange(6), 2))
  with pytest.raises(ValueError, match="prompt by prompt"):
    image_slots.check(np.array([0, 1, 0, 1]), 2)
