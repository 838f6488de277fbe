"""InternVL (family internvl): config checks, unsupported config.json
settings, tile grids, 1D positions, legacy checkpoint names."""

import jax.numpy as jnp
import numpy as np
import pytest
import qwen_fixtures as fx
import torch

from stepjax.models import config as config_lib
from stepjax.models import (
  hf_convert,
  rope_index,
  vision_index,
  vision_internvl,
  vlm,
)


def test_validation_names_the_setting():
  cfg = config_lib.ModelConfig.tiny_internvl()
  with pytest.raises(ValueError, match=r"vision.temporal_patch_size=1"):
    cfg.replace(vision={"temporal_patch_size": 2})
  with pytest.raises(ValueError, match="image_size 60 must be a positive"):
    cfg.replace(vision={"image_size": 60})
  with pytest.raises(ValueError, match="norm_type 'batch_norm'"):
    cfg.replace(vision={"norm_type": "batch_norm"})
  with pytest.raises(ValueError, match=r"text.mrope_interleaved=False"):
    cfg.replace(text={"mrope_interleaved": True})


@pytest.mark.parametrize(
  "key, value, words",
  [
    ("downsample_ratio", 0.25, "downsample_ratio=0.25"),
    ("vision_feature_layer", -2, "vision_feature_layer=-2"),
    ("projector_hidden_act", "relu", "projector_hidden_act='relu'"),
  ],
)
def test_unsupported_config_json_is_refused(key, value, words):
  hf = config_lib.ModelConfig.tiny_internvl().to_hf_dict()
  hf[key] = value
  with pytest.raises(ValueError, match=words):
    config_lib.ModelConfig.from_hf_config(hf)


def test_unsupported_text_and_vision_settings_are_refused():
  hf = config_lib.ModelConfig.tiny_internvl().to_hf_dict()
  hf["text_config"]["model_type"] = "llama"
  hf["vision_config"]["use_mask_token"] = True
  with pytest.raises(ValueError, match="use_mask_token=True.*need qwen2"):
    config_lib.ModelConfig.from_hf_config(hf)


def test_tiles_must_have_the_tile_grid():
  v = config_lib.ModelConfig.tiny_internvl().vision
  vision_index.vision_metadata(np.array([[3, 4, 4]]), 64, v)
  with pytest.raises(ValueError, match=r"must be \(tiles, 4, 4\)"):
    vision_index.vision_metadata(np.array([[1, 4, 6]]), 64, v)


def test_positions_are_1d_and_count_image_tokens():
  cfg = config_lib.ModelConfig.tiny_internvl()
  img = cfg.image_pad_token_id
  ids = np.array([[0, 0, 5, img, img, img, img, 6], [5] + [img] * 4 + [6] * 3])
  mask = np.array([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
  grids = np.array([[1, 4, 4], [1, 4, 4]])
  pos, deltas = rope_index.rope_index(ids, mask, grids, cfg)
  want = np.array([[0, 0, 0, 1, 2, 3, 4, 5], np.arange(8)])
  np.testing.assert_array_equal(pos, np.stack([want] * 3))
  np.testing.assert_array_equal(deltas, 0)
  with pytest.raises(ValueError, match="hold 8 image tokens but"):
    rope_index.rope_index(ids, mask, grids[:1], cfg)


def test_raster_index_is_merge_block_major():
  np.testing.assert_array_equal(
    vision_internvl.raster_index(4),
    [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15],
  )


@pytest.mark.parametrize(
  "legacy, name",
  [
    ("vision_tower.encoder.layer.3.mlp.fc1.weight", "visual.blocks.3.mlp.fc1"),
    ("multi_modal_projector.linear_1.bias", "visual.projector.fc1"),
    ("language_model.model.layers.2.mlp.up_proj.weight",
     "language.layers.2.mlp.up"),
    ("language_model.lm_head.weight", "lm_head"),
    ("model.vision_tower.embeddings.cls_token", "visual.cls_token"),
  ],
)  # fmt: skip
def test_legacy_llava_names_map(legacy, name):
  ours, _ = hf_convert.hf_to_ours_name(legacy, "internvl")
  assert ours.rsplit(".", 1)[0] == name or ours == name


@pytest.mark.parametrize(
  "top, text, tied",
  [(True, True, True), (True, False, False), (False, True, False),
   (None, None, True)],
)  # fmt: skip
def test_tied_only_when_both_configs_say_so(top, text, tied):
  hf = config_lib.ModelConfig.internvl3_8b().to_hf_dict()
  for where, value in ((hf, top), (hf["text_config"], text)):
    where.pop("tie_word_embeddings")
    if value is not None:
      where["tie_word_embeddings"] = value
  assert config_lib.ModelConfig.from_hf_config(hf).tie_word_embeddings == tied


def test_dynamic_ntk_rope_is_plain_rope_below_max_positions(tmp_path):
  """InternVL's small configs use dynamic NTK scaling: read as plain RoPE,
  and transformers' logits with it equal ours."""
  cfg = config_lib.ModelConfig.tiny_internvl()
  hf_dict = cfg.to_hf_dict()
  hf_dict["text_config"]["rope_parameters"] = {
    "rope_type": "dynamic",
    "factor": 2.0,
    "rope_theta": cfg.text.rope_theta,
  }
  assert config_lib.ModelConfig.from_hf_config(hf_dict) == cfg
  config_cls, model_cls = fx.hf_classes(cfg)
  torch.manual_seed(0)
  hf = model_cls(config_cls(**hf_dict)).eval()
  assert hf.config.text_config.rope_parameters["rope_type"] == "dynamic"
  hf.save_pretrained(tmp_path)
  _, params = hf_convert.load_hf(str(tmp_path))
  ids, mask, pix, grids = fx.batch(cfg)
  pos, _ = rope_index.rope_index(ids, mask, grids, cfg)
  with torch.no_grad():
    ref = hf(
      **fx.hf_inputs(cfg, ids, mask, pix, grids),
      position_ids=torch.tensor(pos[0]).long(),
    ).logits.numpy()
  n_rows = vision_index.bucket_rows(grids)
  logits, _, _ = vlm.forward(
    vlm.abstract(cfg)[0], params, jnp.asarray(ids), jnp.asarray(pos),
    jnp.asarray(mask),
    pixels_IxNxP=jnp.asarray(vision_index.pad_pixels(pix, grids, n_rows)),
    vision_meta=vision_index.vision_metadata(grids, n_rows, cfg.vision),
  )  # fmt: skip
  # Real tokens (transformers' default sdpa differs on fully masked rows).
  real = mask.astype(bool)
  assert np.abs(np.asarray(logits) - ref)[real].max() <= 1e-4


def test_other_rope_scaling_is_refused():
  hf = config_lib.ModelConfig.tiny_internvl().to_hf_dict()
  hf["text_config"]["rope_parameters"] = {"rope_type": "linear", "factor": 2}
  with pytest.raises(ValueError, match="need none or dynamic"):
    config_lib.ModelConfig.from_hf_config(hf)


def test_features_at_the_real_tile_size(tmp_path):
  """448-pixel tiles (32x32 patches, 256 tokens each), narrow layers:
  image features equal transformers'."""
  cfg = config_lib.ModelConfig.tiny_internvl().replace(
    vision={"image_size": 448, "depth": 2}
  )
  hf = fx.hf_model(cfg)
  grids = np.array([[2, 32, 32], [1, 32, 32]])
  rows = int(vision_index.num_patches(grids).sum())
  pix = np.random.default_rng(0).standard_normal((rows, cfg.vision.patch_dim))
  pix = pix.astype(np.float32)
  with torch.no_grad():
    ref = hf.model.get_image_features(
      pixel_values=torch.tensor(
        vision_internvl.tiles_from_rows(pix, cfg.vision)
      )
    ).pooler_output.numpy()
  assert ref.shape == (3, 256, cfg.text.hidden_size)
  hf.save_pretrained(tmp_path)
  loaded_cfg, params = hf_convert.load_hf(str(tmp_path))
  assert loaded_cfg == cfg
  n_rows = vision_index.bucket_rows(grids)
  img, valid = vlm.encode_images(
    vlm.abstract(cfg)[0], params,
    jnp.asarray(vision_index.pad_pixels(pix, grids, n_rows)),
    vision_index.vision_metadata(grids, n_rows, cfg.vision),
  )  # fmt: skip
  ours = np.asarray(img)[np.asarray(valid)]
  diff = float(np.abs(ours - ref.reshape(-1, ref.shape[-1])).max())
  print(f"[parity] internvl 448-pixel tiles image feature diff: {diff:.3g}")
  assert diff <= 1e-4
