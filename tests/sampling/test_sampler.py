"""Sampler tests on a tiny random Qwen2.5-VL (fp32, CPU).

Two left-padded prompts of different lengths with images of different
grids; random weights with a large init scale so that greedy decoding has
no near ties.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax import image_slots
from stepjax.models import config as config_lib
from stepjax.models import rope_index, vlm
from stepjax.sampling import sampler

GRIDS = np.array([[1, 4, 4], [1, 4, 8]], np.int32)
N_ROWS = 32
STEPS = 8
TOL = 1e-4


def _prompt_rows(cfg, rng):
  m = cfg.vision.merge_unit
  rows = []
  for (t, h, w), n_text in zip(GRIDS.tolist(), (5, 2)):
    image = (
      [cfg.vision_start_token_id]
      + [cfg.image_pad_token_id] * (t * h * w // m)
      + [cfg.vision_end_token_id]
    )
    text = rng.integers(0, cfg.bos_token_id, n_text + 3).tolist()
    rows.append(text[:n_text] + image + text[n_text:])
  return rows


def _np_batch(cfg, rows, grids, pixels_IxNxP):
  t = max(len(r) for r in rows)
  ids = np.full((len(rows), t), cfg.pad_token_id, np.int32)
  mask = np.zeros((len(rows), t), np.int32)
  for i, r in enumerate(rows):
    ids[i, t - len(r) :] = r
    mask[i, t - len(r) :] = 1
  n = np.prod(grids, axis=1)
  patch_mask = np.arange(N_ROWS)[None] < n[:, None]
  return dict(
    prompt_ids_BxT=ids,
    prompt_mask_BxT=mask,
    pixels_IxNxP=pixels_IxNxP * patch_mask[..., None],
    patch_mask_IxN=patch_mask,
    grid_thw_Ix3=grids,
    image_prompt_I=np.arange(len(rows), dtype=np.int32),
  )


@pytest.fixture(scope="module")
def setup():
  cfg = config_lib.ModelConfig.tiny().replace(initializer_range=0.2)
  graphdef, params = nnx.split(vlm.create(cfg, seed=1), nnx.Param)
  rng = np.random.default_rng(0)
  rows = _prompt_rows(cfg, rng)
  pixels = rng.standard_normal((2, N_ROWS, cfg.vision.patch_dim))
  batch = _np_batch(cfg, rows, GRIDS, pixels.astype(np.float32))
  return dict(
    cfg=cfg,
    graphdef=graphdef,
    params=params,
    rows=rows,
    batch=batch,
    prompt=sampler.prepare_inputs(batch, cfg),
  )


def _gen(s, **kw):
  kw.setdefault("max_new_tokens", STEPS)
  kw.setdefault("pad_id", s["cfg"].pad_token_id)
  rng = kw.pop("rng", jax.random.key(0))
  prompt = kw.pop("prompt", s["prompt"])
  out = sampler.generate(s["graphdef"], s["params"], prompt, rng, **kw)
  return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def sampled(setup):
  """G=4 samples at temperature 1 with a stop id, shared and not shared."""
  cfg = setup["cfg"]
  kw = dict(group_size=4, eos_ids=(cfg.eos_token_id, 7, 11, 13))
  return _gen(setup, **kw), _gen(setup, share_prefix=False, **kw)


@pytest.fixture(scope="module")
def greedy(setup):
  return _gen(setup, temperature=0.0)


def test_logp_matches_teacher_forced_forward(setup, sampled):
  out = sampled[0]
  seq = sampler.full_sequence(setup["prompt"], out, 4)
  t = setup["prompt"].prompt_ids_PxT.shape[1]
  fn = jax.jit(
    lambda params, seq: sampler.teacher_forced_logp(
      setup["graphdef"], params, seq, 4, t
    )
  )
  ref = fn(setup["params"], seq)
  diff = np.abs(np.asarray(ref) - out.logp_BxR)
  print(f"[sampler] logp vs teacher forced: max abs diff {diff.max():.3g}")
  assert diff.max() <= TOL
  assert np.all(out.logp_BxR[out.mask_BxR == 0] == 0)
  # Temperature 1, no filtering: the sampling distribution only drops the
  # banned image/video pad ids, so it is at least as likely.
  real = out.mask_BxR > 0
  assert np.all(out.sample_logp_BxR[real] >= out.logp_BxR[real] - 1e-6)
  assert np.all(out.sample_logp_BxR[real] < 0)


def test_prefix_sharing_gives_same_samples(sampled):
  shared, unshared = sampled
  assert shared.tokens_BxR.shape == (8, STEPS)
  np.testing.assert_array_equal(shared.tokens_BxR, unshared.tokens_BxR)
  np.testing.assert_array_equal(shared.mask_BxR, unshared.mask_BxR)
  np.testing.assert_allclose(shared.logp_BxR, unshared.logp_BxR, atol=TOL)
  # Samples of one group differ (the RNG is per row).
  assert len({tuple(r) for r in shared.tokens_BxR[:4]}) > 1


def test_eos_stop_and_padding(setup, sampled, greedy):
  cfg = setup["cfg"]
  out = sampled[0]
  stop = np.isin(out.tokens_BxR, (cfg.eos_token_id, 7, 11, 13))
  for b in range(out.tokens_BxR.shape[0]):
    hits = np.flatnonzero(stop[b])
    n = hits[0] + 1 if len(hits) else STEPS
    assert out.lengths_B[b] == n
    assert np.all(out.mask_BxR[b, :n] == 1) and np.all(out.mask_BxR[b, n:] == 0)
    assert np.all(out.tokens_BxR[b, n:] == cfg.pad_token_id)
  # Greedy with stop ids taken from an unstopped greedy run.
  free = greedy
  stops = (int(free.tokens_BxR[0, 2]), int(free.tokens_BxR[1, 0]))
  out = _gen(setup, temperature=0.0, eos_ids=stops)
  for b in range(2):
    n = int(np.flatnonzero(np.isin(free.tokens_BxR[b], stops))[0]) + 1
    assert out.lengths_B[b] == n
    np.testing.assert_array_equal(out.tokens_BxR[b, :n], free.tokens_BxR[b, :n])
    assert np.all(out.tokens_BxR[b, n:] == cfg.pad_token_id)
    assert np.all(out.mask_BxR[b, n:] == 0) and np.all(out.logp_BxR[b, n:] == 0)


@functools.partial(jax.jit, static_argnums=0)
def _forward_logits(graphdef, params, ids, pos, mask, pixels, meta):
  logits, _, _ = vlm.forward(
    graphdef, params, ids, pos, mask, pixels_IxNxP=pixels, vision_meta=meta
  )
  return logits


def _argmax_loop(s, b):
  """Greedy tokens of row b from the plain (no cache) forward, re-run on
  the whole sequence each step. The sequence lives in a fixed-size buffer
  (one compile): causal attention makes the unused tail irrelevant."""
  cfg, batch = s["cfg"], s["batch"]
  one = image_slots.take_prompts(batch, [b], len(batch["prompt_ids_BxT"]))
  meta = sampler.prepare_inputs(one, cfg).images.vision_meta
  t = one["prompt_ids_BxT"].shape[1]
  ids = np.full((1, t + STEPS), cfg.pad_token_id, np.int32)
  mask = np.zeros((1, t + STEPS), np.int32)
  ids[:, :t], mask[:, :t] = one["prompt_ids_BxT"], one["prompt_mask_BxT"]
  banned = [cfg.image_pad_token_id, cfg.video_pad_token_id]
  out = []
  for step in range(STEPS):
    pos, _ = rope_index.rope_index(ids, mask, one["grid_thw_Ix3"], cfg)
    logits = _forward_logits(
      s["graphdef"], s["params"], ids, pos, mask, one["pixels_IxNxP"], meta
    )
    last = np.array(logits[0, t + step - 1])
    last[banned] = -np.inf
    out.append(int(np.argmax(last)))
    ids[0, t + step], mask[0, t + step] = out[-1], 1
  pos, _ = rope_index.rope_index(ids, mask, one["grid_thw_Ix3"], cfg)
  return np.array(out), pos[:, 0], mask[0] > 0


def test_greedy_equals_uncached_argmax_loop(setup, greedy):
  seq = sampler.full_sequence(setup["prompt"], greedy, 1)
  for b in range(2):
    ref, pos, real = _argmax_loop(setup, b)
    np.testing.assert_array_equal(greedy.tokens_BxR[b], ref)
    # The trainer's positions are rope_index's on the full sequence.
    np.testing.assert_array_equal(
      np.asarray(seq.positions_3xBxL)[:, b][:, real], pos[:, real]
    )


@pytest.mark.parametrize("kw", [dict(top_k=1), dict(top_p=1e-6)])
def test_filters_that_keep_one_token_equal_greedy(setup, greedy, kw):
  out = _gen(setup, temperature=0.8, rng=jax.random.key(5), **kw)
  np.testing.assert_array_equal(out.tokens_BxR, greedy.tokens_BxR)
  np.testing.assert_allclose(out.logp_BxR, greedy.logp_BxR, atol=TOL)
  np.testing.assert_allclose(out.sample_logp_BxR, 0.0, atol=1e-6)


def test_ragged_prompts_match_each_prompt_alone(setup, greedy):
  """Prompt 0 is left padded in the batch; alone it has no padding (prompt
  1 is unpadded in both, which the batch-independence test covers)."""
  cfg, batch = setup["cfg"], setup["batch"]
  n = int(batch["prompt_mask_BxT"][0].sum())
  assert n < batch["prompt_ids_BxT"].shape[1]
  alone = {k: v[:1] for k, v in batch.items()}
  alone["prompt_ids_BxT"] = alone["prompt_ids_BxT"][:, -n:]
  alone["prompt_mask_BxT"] = alone["prompt_mask_BxT"][:, -n:]
  prompt = sampler.prepare_inputs(alone, cfg)
  out = _gen(setup, temperature=0.0, prompt=prompt)
  np.testing.assert_array_equal(out.tokens_BxR[0], greedy.tokens_BxR[0])
  np.testing.assert_allclose(out.logp_BxR[0], greedy.logp_BxR[0], atol=TOL)


def test_row_samples_do_not_depend_on_the_batch(setup, sampled):
  """Prompt 0 alone, G=4, gives the same samples as rows 0..3 of P=2."""
  batch = {k: v[:1] for k, v in setup["batch"].items()}
  prompt = sampler.prepare_inputs(batch, setup["cfg"])
  cfg = setup["cfg"]
  out = _gen(
    setup,
    prompt=prompt,
    group_size=4,
    eos_ids=(cfg.eos_token_id, 7, 11, 13),
  )
  np.testing.assert_array_equal(out.tokens_BxR, sampled[0].tokens_BxR[:4])


def test_compiles_once_for_repeated_calls(setup, greedy):
  """Same shapes and options, new params and RNG: no new trace."""
  size = sampler._generate_jit._cache_size
  _gen(setup, temperature=0.0)  # compiled at most here (if run alone)
  before = size()
  params2 = jax.tree.map(lambda x: x * 1.01, setup["params"])
  for i, params in enumerate((params2, setup["params"], params2)):
    out = sampler.generate(
      setup["graphdef"], params, setup["prompt"], jax.random.key(i),
      max_new_tokens=STEPS, temperature=0.0, pad_id=setup["cfg"].pad_token_id,
    )  # fmt: skip
    jax.block_until_ready(out)
  assert size() == before


def test_blocked_cumsum_and_input_checks(setup):
  x = np.random.default_rng(0).uniform(size=(3, 4096)).astype(np.float32)
  np.testing.assert_allclose(
    sampler._cumsum(jnp.asarray(x)), np.cumsum(x, -1), rtol=1e-5
  )
  right_padded = dict(setup["batch"])
  right_padded["prompt_mask_BxT"] = right_padded["prompt_mask_BxT"][:, ::-1]
  with pytest.raises(ValueError, match="left padded"):
    sampler.prepare_inputs(right_padded, setup["cfg"])
  with pytest.raises(ValueError, match="max_new_tokens"):
    _gen(setup, max_new_tokens=0)


@pytest.mark.parametrize(
  "temperature, top_k, top_p",
  [(1.0, 0, 1.0), (1.0, 5, 1.0), (0.5, 0, 0.5), (0.7, 8, 0.8)],
)
def test_sampling_distribution(temperature, top_k, top_p):
  """Empirical token frequencies over many rows (one row's logits repeated)
  match temperature -> top-k -> top-p applied by hand."""
  rows, vocab = 8192, 256
  logits_V = 2.0 * np.random.default_rng(1).standard_normal(vocab)
  banned_V = np.zeros(vocab, bool)
  banned_V[3] = True
  fn = jax.jit(
    lambda lg, keys: sampler.sample_tokens(
      lg, keys, temperature, top_k, top_p, banned_V
    )
  )
  keys = sampler.row_keys(jax.random.key(0), 0, jnp.arange(rows))
  tok, logp, slogp = jax.tree.map(
    np.asarray,
    fn(jnp.tile(jnp.asarray(logits_V, jnp.float32), (rows, 1)), keys),
  )
  scaled = np.where(banned_V, -np.inf, logits_V / temperature)
  order = np.argsort(-scaled)
  p = np.exp(scaled - scaled.max())
  p /= p.sum()
  keep = order[: top_k or vocab]
  if top_p < 1.0:
    q = p[keep] / p[keep].sum()
    keep = keep[: np.searchsorted(np.cumsum(q), top_p) + 1]
  want = np.zeros(vocab)
  want[keep] = p[keep] / p[keep].sum()
  freq = np.bincount(tok, minlength=vocab) / rows
  assert np.all(freq[want == 0] == 0)
  assert 0.5 * np.abs(freq - want).sum() < 0.05
  np.testing.assert_allclose(slogp, np.log(want[tok]), atol=1e-5)
  ref = (
    logits_V - np.log(np.exp(logits_V - logits_V.max()).sum()) - logits_V.max()
  )
  np.testing.assert_allclose(logp, ref[tok], atol=1e-5)


def test_remat_config_samples_like_no_remat(setup, greedy):
  """3B/7B presets train with remat: sampling must still run, unchanged."""
  cfg = setup["cfg"].replace(remat=True)
  graphdef, params = nnx.split(vlm.create(cfg, seed=1), nnx.Param)
  out = _gen(
    dict(setup, cfg=cfg, graphdef=graphdef, params=params), temperature=0.0
  )
  np.testing.assert_array_equal(out.tokens_BxR, greedy.tokens_BxR)
  np.testing.assert_allclose(out.logp_BxR, greedy.logp_BxR, atol=1e-5)
