"""What the split-sampler tests and their two-process script share (not a
test module): a tiny random Qwen2.5-VL and eight left-padded prompts with
images of two grids, sampled G = 2 at temperature 1."""

import types

import numpy as np
from flax import nnx

from stepjax.models import config as config_lib
from stepjax.models import vlm

NUM_PROMPTS = 8
GROUP = 2
STEPS = 8
N_ROWS = 32
SEED = 5  # the sampling key: jax.random.key(SEED)


def model():
  """(cfg, graphdef, params): the same random weights in every process."""
  cfg = config_lib.ModelConfig.tiny().replace(initializer_range=0.2)
  graphdef, params = nnx.split(vlm.create(cfg, seed=3), nnx.Param)
  return cfg, graphdef, params


def batch(cfg, num=NUM_PROMPTS):
  """A pipeline-layout batch of the first `num` of NUM_PROMPTS fixed
  prompts (rows of the whole batch: same padding, same images)."""
  rng = np.random.default_rng(0)
  grids = np.array([[1, 4, 4], [1, 4, 8]] * (NUM_PROMPTS // 2), np.int32)
  m = cfg.vision.merge_unit
  seqs = []
  for i, (t, h, w) in enumerate(grids.tolist()):
    image = (
      [cfg.vision_start_token_id]
      + [cfg.image_pad_token_id] * (t * h * w // m)
      + [cfg.vision_end_token_id]
    )
    text = rng.integers(0, cfg.bos_token_id, 3 + i % 4).tolist()
    seqs.append(text[:2] + image + text[2:])
  t = max(len(s) for s in seqs)
  ids = np.full((NUM_PROMPTS, t), cfg.pad_token_id, np.int32)
  mask = np.zeros((NUM_PROMPTS, t), np.int32)
  for i, s in enumerate(seqs):
    ids[i, t - len(s) :] = s
    mask[i, t - len(s) :] = 1
  patch_mask = np.arange(N_ROWS)[None] < np.prod(grids, 1)[:, None]
  pixels = rng.standard_normal((NUM_PROMPTS, N_ROWS, cfg.vision.patch_dim))
  whole = dict(
    prompt_ids_BxT=ids,
    prompt_mask_BxT=mask,
    pixels_IxNxP=(pixels * patch_mask[..., None]).astype(np.float32),
    patch_mask_IxN=patch_mask,
    grid_thw_Ix3=grids,
    image_prompt_I=np.arange(NUM_PROMPTS, dtype=np.int32),
  )
  return {k: v[:num] for k, v in whole.items()}


def sampler_kwargs(cfg):
  return dict(
    group_size=GROUP,
    max_new_tokens=STEPS,
    temperature=1.0,
    eos_ids=(cfg.eos_token_id, 7),
    pad_id=cfg.pad_token_id,
  )


def rollout_args(cfg, graphdef):
  """(graphs, tok_info, sampling config) as `train.rollout.generate` takes
  them, with the stop and pad ids of `sampler_kwargs` (one stop id)."""
  graphs = types.SimpleNamespace(cfg=cfg, policy=graphdef)
  tok_info = types.SimpleNamespace(
    eos_id=cfg.eos_token_id,
    stop_ids=(cfg.eos_token_id,),
    pad_id=cfg.pad_token_id,
  )
  sampling = types.SimpleNamespace(max_new_tokens=STEPS, top_k=0, top_p=1.0)
  return graphs, tok_info, sampling
