"""The sampler split over a mesh's batch axes (8 simulated CPU devices).

Eight left-padded prompts with images of two grids, G = 2: sixteen rows.
Split over (data, fsdp), every device decodes only its rows (the compiled
program's prompt, cache and token arrays hold B / shards rows), and the
samples equal the unsplit sampler's token for token, because each row's
randomness is a function of its global index.
"""

import json
import pathlib
import re

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from stepjax import rows
from stepjax.sampling import sampler
from stepjax.train import rollout, sharding

from . import split_setup

NUM_PROMPTS, GROUP, STEPS = (
  split_setup.NUM_PROMPTS,
  split_setup.GROUP,
  split_setup.STEPS,
)

RULES = (
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("vocab", "tensor"),
)


@pytest.fixture(scope="module")
def setup():
  cfg, graphdef, params = split_setup.model()
  prompt = sampler.prepare_inputs(split_setup.batch(cfg), cfg)
  kw = split_setup.sampler_kwargs(cfg)
  rng = jax.random.key(split_setup.SEED)
  want = sampler.generate(graphdef, params, prompt, rng, **kw)
  return cfg, graphdef, params, prompt, kw, jax.device_get(want)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2)])
def test_split_sampler_equals_unsplit(setup, shape):
  assert jax.device_count() == 8
  cfg, graphdef, params, prompt, kw, want = setup
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)))
  shards = rows.batch_shards(mesh)
  placed = jax.device_put(params, sharding.state_shardings(params, mesh, RULES))
  split_prompt = rows.place(prompt, mesh)
  assert split_prompt.prompt_ids_PxT.sharding.spec == P(rows.BATCH_AXES, None)
  assert split_prompt.positions_3xPxT.sharding.spec == P(
    None, rows.BATCH_AXES, None
  )
  rng = jax.random.key(split_setup.SEED)
  got = sampler.generate(graphdef, placed, split_prompt, rng, mesh=mesh, **kw)

  # Each device holds B / shards sampled rows.
  b = NUM_PROMPTS * GROUP
  want_sharding = NamedSharding(mesh, P(rows.BATCH_AXES, None))
  assert got.tokens_BxR.sharding.is_equivalent_to(want_sharding, 2)
  for shard in got.tokens_BxR.addressable_shards:
    assert shard.data.shape == (b // shards, STEPS)

  got = jax.device_get(got)
  np.testing.assert_array_equal(got.tokens_BxR, want.tokens_BxR)
  np.testing.assert_array_equal(got.mask_BxR, want.mask_BxR)
  assert want.mask_BxR.sum() > b  # real samples, not all stops at once
  # float32 log-probs of two partitionings of the same sums: a few ulps of
  # values up to ~7 nats (seen: 1.9e-5 at -5.2), far below a wrong token
  # or a shifted column (differences of order 1).
  np.testing.assert_allclose(got.logp_BxR, want.logp_BxR, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    got.sample_logp_BxR, want.sample_logp_BxR, rtol=1e-5, atol=1e-5
  )

  # The compiled per-device program decodes B / shards rows: its KV cache
  # (rows x kv heads x slots x head dim) has that many rows, never B.
  hlo = (
    sampler._generate_jit.lower(
      graphdef,
      placed,
      split_prompt,
      rng,
      mesh=mesh,
      share_prefix=True,
      suppress_ids=None,
      top_k=0,
      top_p=1.0,
      **{k: (tuple(v) if k == "eos_ids" else v) for k, v in kw.items()},
    )  # fmt: skip
    .compile()
    .as_text()
  )
  t = cfg.text
  slots = prompt.prompt_ids_PxT.shape[1] + STEPS - 1
  cache_dims = rf"\[(\d+),(\d+),{slots},{t.head_dim}\]"
  found = {(int(r), int(h)) for r, h in re.findall(cache_dims, hlo)}
  row_counts = {r for r, _ in found}
  # Prefill writes P / shards rows, decoding reads and writes B / shards.
  assert {NUM_PROMPTS // shards, b // shards} <= row_counts, found
  assert not row_counts & {NUM_PROMPTS, b}, found
  if shape[2] > 1:  # tensor-parallel decode: kv heads split too
    assert (b // shards, t.num_kv_heads // shape[2]) in found, found


def test_row_axis_from_names():
  assert rows.row_axis("prompt_ids_PxT") == 0
  assert rows.row_axis("positions_3xPxT") == 1
  assert rows.row_axis("k_BxGxSxK") == 0
  assert rows.row_axis("pixels_IxNxP") == 0
  with pytest.raises(ValueError, match="names no row axis"):
    rows.row_axis("prompt_len")


def test_rollout_pads_prompts_that_do_not_split(setup):
  """Five prompts on eight row shards: padded to eight, the padding's
  completions dropped, the five equal to an unsplit run's."""
  cfg, graphdef, params, _, kw, want = setup
  mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  graphs, tok_info, sampling = split_setup.rollout_args(cfg, graphdef)
  got = rollout.generate(
    graphs, tok_info, sampling, params, split_setup.batch(cfg, 5),
    jax.random.key(split_setup.SEED), group_size=GROUP, temperature=1.0,
    mesh=mesh,
  )  # fmt: skip
  kept = 5 * GROUP
  assert got.tokens_BxR.shape == (kept, STEPS)
  # One stop id here (the tokenizer's), two in `want`: compare up to the
  # first stop either way.
  first = np.argmax(np.isin(want.tokens_BxR[:kept], (cfg.eos_token_id, 7)), 1)
  for b in range(kept):
    n = first[b] + 1 if want.mask_BxR[b].sum() < STEPS else STEPS
    np.testing.assert_array_equal(got.tokens_BxR[b, :n], want.tokens_BxR[b, :n])


def test_two_processes_sample_their_own_rows(tmp_path, two_processes):
  """2 processes x 2 devices (gloo): each gets back exactly its prompts'
  completions, equal to the unsplit sampler's."""
  script = pathlib.Path(__file__).parent / "multiprocess_sample.py"
  two_processes(script, tmp_path)
  for pid in range(2):
    result = json.loads((tmp_path / f"proc{pid}.json").read_text())
    print(f"process {pid}: {result}")
    assert result["rows"] == NUM_PROMPTS // 2 * GROUP
    assert result["generated"] > result["rows"]
    assert result["tokens_equal"] and result["mask_equal"], result
    assert result["max_logp_diff"] <= 1e-5, result
