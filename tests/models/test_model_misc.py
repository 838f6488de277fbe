"""Configs, logical axes, dtypes, remat, KV-cache consistency, value head."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax.models import config as config_lib
from stepjax.models import rope_index, step_value, vision_index, vlm
from stepjax.train import policy

PRESETS = [
  "tiny",
  "tiny_alt",
  "synthmed",
  "bench",
  "qwen25vl_3b",
  "qwen25vl_7b",
  "tiny_qwen3",
  "tiny_qwen3_alt",
  "synthmed_qwen3",
  "qwen3vl_2b",
  "qwen3vl_4b",
  "qwen3vl_8b",
  "tiny_internvl",
  "tiny_internvl_alt",
  "synthmed_internvl",
  "internvl3_1b",
  "internvl3_2b",
  "internvl3_8b",
]


@pytest.mark.parametrize("preset", PRESETS)
def test_hf_dict_round_trip(preset):
  cfg = getattr(config_lib.ModelConfig, preset)()
  back = config_lib.ModelConfig.from_hf_config(
    cfg.to_hf_dict(), param_dtype=cfg.param_dtype, dtype=cfg.dtype
  )
  assert back == cfg


def test_replace_and_validation():
  cfg = config_lib.ModelConfig.tiny(vocab_size=1500)
  assert cfg.text.vocab_size == 1500 and cfg.image_pad_token_id == 1498
  alt = cfg.replace(text={"num_layers": 5}, remat=True)
  assert alt.text.num_layers == 5 and alt.remat and alt.vision == cfg.vision
  with pytest.raises(ValueError, match="mrope_section"):
    cfg.replace(text={"mrope_section": (1, 1, 1)})
  with pytest.raises(ValueError, match="param_dtype"):
    cfg.replace(param_dtype="float8")


def test_family_validation_names_the_setting():
  tiny = config_lib.ModelConfig.tiny()
  with pytest.raises(ValueError, match="num_position_embeddings must be a"):
    tiny.replace(family="qwen3_vl")
  qwen3 = config_lib.ModelConfig.tiny_qwen3()
  with pytest.raises(ValueError, match="window_size must be positive"):
    qwen3.replace(family="qwen2_5_vl")
  with pytest.raises(ValueError, match=r"text.qk_norm=True \(got False\)"):
    qwen3.replace(text={"qk_norm": False})
  with pytest.raises(ValueError, match="deepstack_visual_indexes must lie"):
    qwen3.replace(vision={"deepstack_visual_indexes": (7,)})
  with pytest.raises(ValueError, match="family 'llava'"):
    tiny.replace(family="llava")
  hf = qwen3.to_hf_dict()
  hf["text_config"]["attention_bias"] = True
  with pytest.raises(ValueError, match="attention_bias=true"):
    config_lib.ModelConfig.from_hf_config(hf)
  with pytest.raises(ValueError, match="model_type 'llava'"):
    config_lib.ModelConfig.from_hf_config({"model_type": "llava"})


@pytest.mark.parametrize(
  "preset", ["tiny_alt", "tiny_qwen3", "tiny_internvl_alt"]
)
def test_every_param_has_logical_axes(preset):
  _, state = vlm.abstract(getattr(config_lib.ModelConfig, preset)())
  for path, var in nnx.to_flat_state(state):
    axes = var.get_metadata().get("out_sharding")
    assert axes is not None and len(axes) == len(var.shape), path
  names = {
    a
    for _, v in nnx.to_flat_state(state)
    for a in v.get_metadata()["out_sharding"]
  }
  assert {"embed", "mlp", "heads", "kv_heads", "vocab"} <= names


def _inputs(cfg):
  grids = np.array([[1, 4, 6], [1, 2, 4]])
  if cfg.family == "internvl":  # tiles of side x side patches
    side = cfg.vision.tile_side
    grids = np.array([[2, side, side], [1, side, side]])
  n_rows = vision_index.bucket_rows(grids, 8)
  n_img = [int(np.prod(g)) // 4 for g in grids]
  seq = (
    [1, 2, cfg.vision_start_token_id]
    + [cfg.image_pad_token_id] * n_img[0]
    + [cfg.vision_end_token_id, 3]
  )
  seq2 = [cfg.vision_start_token_id] + [cfg.image_pad_token_id] * n_img[1]
  seq2 = seq2 + [cfg.vision_end_token_id, 4, 5]
  t = max(len(seq), len(seq2))
  ids = np.full((2, t), cfg.pad_token_id)
  mask = np.zeros((2, t), np.int32)
  ids[0, t - len(seq) :], mask[0, t - len(seq) :] = seq, 1
  ids[1, t - len(seq2) :], mask[1, t - len(seq2) :] = seq2, 1
  pix = np.random.default_rng(0).standard_normal(
    (2, n_rows, cfg.vision.patch_dim)
  )
  meta = vision_index.vision_metadata(grids, n_rows, cfg.vision)
  pos, deltas = rope_index.rope_index(ids, mask, grids, cfg)
  return ids, mask, pix.astype(np.float32), meta, pos, deltas


@pytest.mark.parametrize("preset", ["tiny", "tiny_qwen3", "tiny_internvl"])
def test_cache_decode_equals_full_forward_and_remat(preset):
  cfg = getattr(config_lib.ModelConfig, preset)().replace(remat=True)
  gd, params = nnx.split(vlm.create(cfg))
  ids, mask, pix, meta, pos, deltas = _inputs(cfg)
  t = ids.shape[1]

  @jax.jit
  def run(params):
    full, hidden, _ = vlm.forward(
      gd, params, ids, pos, mask, pixels_IxNxP=pix, vision_meta=meta
    )
    # Prefill all but the last token, then decode it from the cache.
    cache = vlm.language.init_cache(cfg, 2, t + 3)
    _, _, cache = vlm.forward(
      gd, params, ids[:, :-1], pos[:, :, :-1], mask[:, :-1],
      pixels_IxNxP=pix, vision_meta=meta, cache=cache, cache_index=0,
    )  # fmt: skip
    last, _, cache = vlm.forward(
      gd, params, ids[:, -1:], pos[:, :, -1:], mask[:, -1:], cache=cache,
      cache_index=jnp.int32(t - 1),
    )  # fmt: skip
    return full, hidden, last, cache

  full, hidden, last, cache = run(params)
  np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-5)
  assert len(cache["layers"]) == cfg.text.num_layers
  t_ = cfg.text
  for kv in cache["layers"]:
    assert kv["k_BxGxSxK"].shape == (2, t_.num_kv_heads, t + 3, t_.head_dim)
    assert kv["v_BxGxSxK"].shape == kv["k_BxGxSxK"].shape
  assert hidden.shape == (2, t, cfg.text.hidden_size)

  # Gradients flow through the rematerialised layers and the vision tower.
  def loss(p):
    out, _, _ = vlm.forward(
      gd, p, ids, pos, mask, pixels_IxNxP=pix, vision_meta=meta
    )
    return jnp.mean(out**2)

  grads = jax.jit(jax.grad(loss))(params)
  g = np.asarray(grads["visual"]["patch_embed"]["kernel"][...])
  assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_bfloat16_forward_runs():
  cfg = config_lib.ModelConfig.tiny().replace(
    param_dtype="bfloat16", dtype="bfloat16"
  )
  model = vlm.create(cfg)
  ids, mask, pix, meta, pos, _ = _inputs(cfg)
  logits, hidden, _ = jax.jit(
    lambda i, p, m, x: model(i, p, m, pixels_IxNxP=x, vision_meta=meta)
  )(ids, pos, mask, pix)
  assert logits.dtype == jnp.bfloat16 and hidden.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(logits, np.float32)).all()


def test_step_value_head_is_separate():
  cfg = config_lib.ModelConfig.tiny()
  head = step_value.create(cfg, seed=3)
  gd, params = nnx.split(head)
  hidden = jnp.ones((2, 5, cfg.text.hidden_size))
  out = jax.jit(step_value.apply, static_argnums=0)(gd, params, hidden)
  assert out.shape == (2, 5) and out.dtype == jnp.float32
  policy_paths = {p[0] for p, _ in nnx.to_flat_state(vlm.abstract(cfg)[1])}
  assert policy_paths == {"visual", "language"}  # tied: no lm_head


@pytest.mark.parametrize(
  "preset",
  ["tiny", "tiny_alt", "tiny_qwen3", "tiny_internvl", "tiny_internvl_alt"],
)
def test_abstract_equals_eval_shape_of_create(preset):
  """vlm.abstract and policy.abstract build shapes without tracing; they
  must give what nnx.eval_shape of the real constructors gives: the same
  graphdefs, tree, shapes, dtypes and logical axes."""
  cfg = dataclasses.replace(
    getattr(config_lib.ModelConfig, preset)(),
    grounding_outputs=3,
    value_input="last+step_mean",
  )
  with nnx.use_eager_sharding(False):
    traced = [
      nnx.split(nnx.eval_shape(lambda: vlm.create(cfg, seed=0)), nnx.Param),
      nnx.split(
        nnx.eval_shape(lambda: step_value.create(cfg, seed=0)), nnx.Param
      ),
    ]
  graphs, policy_params, value_params = policy.abstract(cfg)
  built = [(graphs.policy, policy_params), (graphs.value, value_params)]
  assert vlm.abstract(cfg)[0] == graphs.policy
  for (gd_a, state_a), (gd_b, state_b) in zip(traced, built):
    assert gd_a == gd_b
    assert jax.tree.structure(state_a) == jax.tree.structure(state_b)
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
      assert isinstance(b, jax.ShapeDtypeStruct)
      assert (a.shape, a.dtype) == (b.shape, b.dtype)
    assert nnx.get_partition_spec(state_a) == nnx.get_partition_spec(state_b)
  assert len(jax.tree.leaves(value_params)) > 4  # the grounding, step mean


def test_vision_index_errors():
  v = config_lib.ModelConfig.tiny().vision
  with pytest.raises(ValueError, match="bucket N=16"):
    vision_index.vision_metadata(np.array([[1, 4, 6]]), 16, v)
  with pytest.raises(ValueError, match="multiples of spatial_merge_size"):
    vision_index.vision_metadata(np.array([[1, 3, 6]]), 64, v)


def test_rope_index_errors():
  cfg = config_lib.ModelConfig.tiny()
  ids = np.array([[1, cfg.image_pad_token_id, cfg.image_pad_token_id, 2]])
  with pytest.raises(ValueError, match="needs 6"):
    rope_index.rope_index(ids, None, np.array([[1, 4, 6]]), cfg)
  with pytest.raises(ValueError, match="more <|image_pad|> runs"):
    rope_index.rope_index(ids, None, None, cfg)


@pytest.mark.parametrize("preset", ["tiny", "tiny_qwen3", "tiny_internvl"])
def test_empty_image_slots_are_skipped(preset):
  """A grid row (0, 0, 0) is an empty image slot: no valid tokens, no pad
  run in rope_index; the other images' features and positions are as
  without it."""
  cfg = getattr(config_lib.ModelConfig, preset)()
  v = cfg.vision
  side = v.tile_side if v.image_size else 4
  grid = np.array([[1, side, side]])
  n = -(-side * side // 64) * 64
  with_empty = np.array([[0, 0, 0], [1, side, side], [0, 0, 0]])
  meta = vision_index.vision_metadata(with_empty, n, v)
  alone = vision_index.vision_metadata(grid, n, v)
  assert not meta.valid_IxM[0].any() and not meta.valid_IxM[2].any()
  for got, want in zip(jax.tree.leaves(meta), jax.tree.leaves(alone)):
    np.testing.assert_array_equal(got[1], want[0])
  pads = side * side // v.merge_unit
  ids = np.array([[1, 2] + [cfg.image_pad_token_id] * pads + [3]])
  want = rope_index.rope_index(ids, None, grid, cfg)
  got = rope_index.rope_index(ids, None, with_empty, cfg)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])


def test_decode_step_writes_the_donated_cache_in_place():
  """Each layer's k/v buffers are reused by a donated one-token step."""
  cfg = config_lib.ModelConfig.tiny()
  gd, params = nnx.split(vlm.create(cfg))
  cache = vlm.language.init_cache(cfg, 2, 8)

  @functools.partial(jax.jit, donate_argnums=1)
  def step(params, cache, tok_Bx1, index):
    pos = rope_index.next_positions(jnp.full((2,), index), jnp.zeros(2))
    _, _, cache = vlm.forward(
      gd, params, tok_Bx1, pos, jnp.ones_like(tok_Bx1), cache=cache,
      cache_index=index,
    )  # fmt: skip
    return cache

  before = [
    kv[name].unsafe_buffer_pointer()
    for kv in cache["layers"]
    for name in ("k_BxGxSxK", "v_BxGxSxK")
  ]
  out = step(params, cache, jnp.ones((2, 1), jnp.int32), jnp.int32(3))
  after = [
    kv[name].unsafe_buffer_pointer()
    for kv in out["layers"]
    for name in ("k_BxGxSxK", "v_BxGxSxK")
  ]
  assert before == after
  k = np.asarray(out["layers"][0]["k_BxGxSxK"])
  assert np.abs(k[:, :, 3]).max() > 0 and np.abs(k[:, :, 4:]).max() == 0
  np.testing.assert_array_equal(
    np.asarray(out["mask_BxS"]), np.arange(8)[None].repeat(2, 0) == 3
  )


@pytest.mark.parametrize("preset", ["tiny", "tiny_alt", "qwen25vl_7b"])
def test_window_slots_hold_every_window(preset):
  """Each real row sits in exactly one slot row, with its window's id;
  W depends only on N, also for thin, ragged and multi-frame grids."""
  v = getattr(config_lib.ModelConfig, preset)().vision
  lw = vision_index.window_rows(v)
  grids = [[1, 8, 12], [1, 6, 4], [1, 2, 126], [3, 6, 10], [1, 14, 18]]
  n_rows = 256
  meta = vision_index.vision_metadata(np.array(grids), n_rows, v)
  w = vision_index.window_slots(n_rows, v)
  assert meta.slot_rows_IxWxL.shape == (len(grids), w, lw)
  assert meta.row_slot_IxN.shape == (len(grids), n_rows)
  m = v.spatial_merge_size
  win = v.window_size // v.patch_size // m
  for i, (t, h, wd) in enumerate(grids):
    n = t * h * wd
    rows = meta.slot_rows_IxWxL[i].reshape(-1)
    seg = meta.slot_seg_IxWxL[i].reshape(-1)
    slot = meta.row_slot_IxN[i, :n]
    np.testing.assert_array_equal(rows[slot], np.arange(n))
    assert (seg >= 0).sum() == n
    # Window ids of the window-ordered rows, recomputed from the grid.
    src = meta.perm_IxN[i, :n] // v.merge_unit  # merged unit (f, bh, bw)
    f, rest = np.divmod(src, (h // m) * (wd // m))
    bh, bw = np.divmod(rest, wd // m)
    nwh, nww = -(-(h // m) // win), -(-(wd // m) // win)
    want = (f * nwh + bh // win) * nww + bw // win
    np.testing.assert_array_equal(seg[slot], want)
    assert len(np.unique(want)) == t * nwh * nww


@pytest.mark.parametrize(
  "preset", ["tiny_alt", "tiny_qwen3", "tiny_internvl_alt"]
)
def test_vision_remat_changes_nothing_but_memory(preset):
  """cfg.remat rematerialises vision blocks: same features and grads."""
  cfg = getattr(config_lib.ModelConfig, preset)()
  _, params = nnx.split(vlm.create(cfg))
  *_, pix, meta, _, _ = _inputs(cfg)

  def grads(remat):
    gd, _ = vlm.abstract(cfg.replace(remat=remat))

    def loss(p):
      img, valid = vlm.encode_images(gd, p, pix, meta)
      return jnp.sum(jnp.where(valid[..., None], img, 0.0) ** 2), img

    return jax.jit(jax.grad(loss, has_aux=True))(params)

  (g0, img0), (g1, img1) = grads(False), grads(True)
  np.testing.assert_allclose(np.asarray(img1), np.asarray(img0), atol=1e-5)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4,
                               atol=1e-5)  # fmt: skip


def test_row_loop_attention_equals_dense():
  """`attention="rows"` (per-sequence loop, recomputed in the backward)
  gives the dense path's logits and gradients."""
  dense_cfg = config_lib.ModelConfig.tiny()
  rows_cfg = dense_cfg.replace(attention="rows")
  gd_dense, params = nnx.split(vlm.create(dense_cfg))
  gd_rows, _ = nnx.split(vlm.create(rows_cfg))
  ids, mask, pix, meta, pos, _ = _inputs(dense_cfg)

  def loss(gd, p):
    out, _, _ = vlm.forward(
      gd, p, ids, pos, mask, pixels_IxNxP=pix, vision_meta=meta
    )
    return jnp.mean(out**2), out

  grad = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True),
                 static_argnums=0)  # fmt: skip
  (_, out_d), g_d = grad(gd_dense, params)
  (_, out_r), g_r = grad(gd_rows, params)
  np.testing.assert_allclose(out_r, out_d, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_d), jax.tree.leaves(g_r)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
  with pytest.raises(ValueError, match="attention"):
    dense_cfg.replace(attention="flash")
