"""Parity with transformers' Qwen2_5_VLForConditionalGeneration,
Qwen3VLForConditionalGeneration and InternVLForConditionalGeneration
(fp32).

Per family two tiny configs. Qwen2.5-VL: they differ in window layout
(2x2 vs ragged 3x3 windows), full-attention blocks, depth, widths and tied
vs untied embeddings. Qwen3-VL: 4x4 vs 6x6 learned position grids, two vs
one DeepStack levels, head_dim 32 != hidden / heads vs the default, tied vs
untied. InternVL: 56- vs 84-pixel tiles (4 vs 9 tokens a tile), LayerNorm
vs RMSNorm, q/k/v biases vs q/k norms, no final norm vs one, tied vs
untied; its images are 3, 1 and 2 tiles. A batch of three images of
different grids (Qwen: merged grids 4x6, 3x2, 2x5) in two left-padded
prompts. transformers' InternVL forward counts positions from the left
edge, padding included, so its reference logits get the positions its
generate computes (ours) explicitly.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwen_fixtures as fx
import torch
from flax import nnx

from stepjax.models import config as config_lib
from stepjax.models import (
  hf_convert,
  rope_index,
  vision_index,
  vision_qwen3,
  vlm,
)

TOL = 1e-4
STEPS = 32


@pytest.fixture(
  scope="module",
  params=[
    "tiny",
    "tiny_alt",
    "tiny_qwen3",
    "tiny_qwen3_alt",
    "tiny_internvl",
    "tiny_internvl_alt",
  ],
)
def setup(request, tmp_path_factory):
  cfg = getattr(config_lib.ModelConfig, request.param)()
  hf = fx.hf_model(cfg)
  ids, mask, pix, grids = fx.batch(cfg)
  inputs = fx.hf_inputs(cfg, ids, mask, pix, grids)
  pos, deltas = rope_index.rope_index(ids, mask, grids, cfg)
  forward_inputs = dict(inputs)
  if cfg.family == "internvl":
    forward_inputs["position_ids"] = torch.tensor(pos[0]).long()
  with torch.no_grad():
    ref_logits = hf(**forward_inputs).logits.numpy()
  directory = str(tmp_path_factory.mktemp(request.param))
  hf.save_pretrained(directory)
  loaded_cfg, params = hf_convert.load_hf(directory)
  assert loaded_cfg == cfg
  graphdef, _ = vlm.abstract(cfg)
  n_rows = vision_index.bucket_rows(grids)
  ours = dict(
    ids=jnp.asarray(ids),
    mask=jnp.asarray(mask),
    pixels=jnp.asarray(vision_index.pad_pixels(pix, grids, n_rows)),
    meta=vision_index.vision_metadata(grids, n_rows, cfg.vision),
  )
  ours.update(pos=jnp.asarray(pos), deltas=deltas)
  return dict(
    name=request.param,
    cfg=cfg,
    hf=hf,
    inputs=inputs,
    forward_inputs=forward_inputs,
    ref_logits=ref_logits,
    graphdef=graphdef,
    params=params,
    ours=ours,
    np_batch=(ids, mask, pix, grids),
    directory=directory,
  )


def _report(name, cfg_name, value):
  print(f"[parity] {cfg_name} {name}: {value:.3g}")


def test_rope_index_matches_transformers(setup):
  ids, mask, _, grids = setup["np_batch"]
  if setup["cfg"].family == "internvl":  # generate's 1D positions
    hf_pos = setup["hf"]._prepare_position_ids_for_generation(
      torch.tensor(ids), {"attention_mask": torch.tensor(mask)}
    )
    for row in np.asarray(setup["ours"]["pos"]):
      np.testing.assert_array_equal(row, hf_pos)
    np.testing.assert_array_equal(setup["ours"]["deltas"], 0)
    return
  hf_pos, hf_deltas = setup["hf"].model.get_rope_index(
    torch.tensor(ids),
    torch.tensor((ids == setup["cfg"].image_pad_token_id).astype(np.int64)),
    torch.tensor(grids),
    attention_mask=torch.tensor(mask),
  )
  np.testing.assert_array_equal(np.asarray(setup["ours"]["pos"]), hf_pos)
  np.testing.assert_array_equal(setup["ours"]["deltas"], hf_deltas[:, 0])


def test_image_features_match_transformers(setup):
  _, _, pix, grids = setup["np_batch"]
  cfg = setup["cfg"]
  with torch.no_grad():
    if cfg.family == "internvl":  # per tile; regroup them by image
      ref = setup["hf"].model.get_image_features(
        pixel_values=setup["inputs"]["pixel_values"]
      )
      tokens = ref.pooler_output.reshape(-1, cfg.text.hidden_size)
      ref.pooler_output = tokens.split(
        [int(np.prod(g)) // cfg.vision.merge_unit for g in grids]
      )
    else:
      ref = setup["hf"].model.get_image_features(
        torch.tensor(pix), torch.tensor(grids)
      )
    deepstack = getattr(ref, "deepstack_features", None) or []
    ref = ref.pooler_output
  o = setup["ours"]
  img, valid = vlm.encode_images(
    setup["graphdef"], setup["params"], o["pixels"], o["meta"]
  )
  main, levels = vision_qwen3.split_levels(img, setup["cfg"].text.hidden_size)
  assert levels.shape[0] == setup["cfg"].vision.num_deepstack
  worst = 0.0
  for i, r in enumerate(ref):
    r = r.numpy()
    assert np.asarray(valid[i]).sum() == len(r)
    worst = max(worst, float(np.abs(main[i, : len(r)] - r).max()))
  for s, per_image in enumerate(deepstack):
    for i, r in enumerate(per_image):
      r = r.numpy()
      worst = max(worst, float(np.abs(levels[s, i, : len(r)] - r).max()))
  _report("image feature max abs diff", setup["name"], worst)
  assert worst <= TOL


@pytest.mark.parametrize("use_jit", [False, True])
def test_logits_match_transformers(setup, use_jit):
  o = setup["ours"]

  def run(params, ids, pos, mask, pixels, meta):
    return vlm.forward(
      setup["graphdef"], params, ids, pos, mask, pixels_IxNxP=pixels,
      vision_meta=meta,
    )  # fmt: skip

  fn = jax.jit(run) if use_jit else run
  logits, hidden, cache = fn(
    setup["params"], o["ids"], o["pos"], o["mask"], o["pixels"], o["meta"]
  )
  assert cache is None
  assert hidden.shape[:2] == o["ids"].shape
  # All positions, left padding included (fully masked query rows attend
  # uniformly in both implementations).
  diff = np.abs(np.asarray(logits) - setup["ref_logits"])
  scale = np.abs(setup["ref_logits"]).max()
  _report(f"logits max abs diff (jit={use_jit})", setup["name"],
          diff.max())  # fmt: skip
  _report("logits max |logit|", setup["name"], scale)
  assert diff.max() <= TOL
  assert diff.max() <= TOL * scale


def test_greedy_generation_matches_transformers(setup):
  cfg, o = setup["cfg"], setup["ours"]
  t = o["ids"].shape[1]
  with torch.no_grad():
    out = setup["hf"].generate(
      **setup["inputs"],
      max_new_tokens=STEPS,
      do_sample=False,
      output_logits=True,
      return_dict_in_generate=True,
    )
  hf_new = out.sequences[:, t:].numpy()
  hf_top2 = np.sort(np.stack([x.numpy() for x in out.logits], 1), -1)
  near_ties = int((hf_top2[..., -1] - hf_top2[..., -2] < 1e-3).sum())

  graphdef = setup["graphdef"]

  @jax.jit
  def prefill(params, ids, pos, mask, pixels, meta):
    cache = vlm.language.init_cache(cfg, ids.shape[0], t + STEPS)
    logits, _, cache = vlm.forward(
      graphdef, params, ids, pos, mask, pixels_IxNxP=pixels,
      vision_meta=meta, cache=cache, cache_index=0,
    )  # fmt: skip
    return logits[:, -1], cache

  @jax.jit
  def decode(params, tok_B, pos, cache, index):
    logits, _, cache = vlm.forward(
      graphdef, params, tok_B[:, None], pos, jnp.ones_like(tok_B)[:, None],
      cache=cache, cache_index=index,
    )  # fmt: skip
    return logits[:, -1], cache

  params = setup["params"]
  logits, cache = prefill(
    params, o["ids"], o["pos"], o["mask"], o["pixels"], o["meta"]
  )
  num_real = np.asarray(o["mask"]).sum(1)
  done = np.zeros(len(num_real), bool)
  tokens = []
  for step in range(STEPS):
    tok = np.asarray(jnp.argmax(logits, -1))
    tok = np.where(done, cfg.pad_token_id, tok)
    done |= tok == cfg.eos_token_id
    tokens.append(tok)
    pos = rope_index.next_positions(num_real + step, o["deltas"])
    logits, cache = decode(params, jnp.asarray(tok), pos, cache, t + step)
  ours_new = np.stack(tokens, 1)
  mismatches = int((ours_new != hf_new).sum())
  print(
    f"[parity] {setup['name']} generation mismatches={mismatches}"
    f" near_ties={near_ties}"
  )
  assert hf_new.shape == ours_new.shape == (2, STEPS)
  assert mismatches <= near_ties
  if near_ties == 0:
    np.testing.assert_array_equal(ours_new, hf_new)


def test_round_trip_through_save_hf(setup, tmp_path):
  out_dir = os.path.join(tmp_path, "roundtrip")
  hf_convert.save_hf(setup["params"], setup["cfg"], out_dir)
  model_cls = fx.hf_classes(setup["cfg"])[1]
  reloaded = model_cls.from_pretrained(
    out_dir, attn_implementation="eager", dtype=torch.float32
  ).eval()
  with torch.no_grad():
    logits = reloaded(**setup["forward_inputs"]).logits.numpy()
  np.testing.assert_array_equal(logits, setup["ref_logits"])
  original = setup["hf"].state_dict()
  for name, value in reloaded.state_dict().items():
    torch.testing.assert_close(value, original[name], rtol=0, atol=0)
  # And back into stepjax once more.
  _, params2 = hf_convert.load_hf(out_dir)
  for (p1, a), (p2, b) in zip(
    nnx.to_flat_state(setup["params"]), nnx.to_flat_state(params2)
  ):
    assert p1 == p2
    np.testing.assert_array_equal(
      np.asarray(a.get_value()), np.asarray(b.get_value())
    )
