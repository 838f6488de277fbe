"""Interleaved M-RoPE (Qwen3-VL's layout) equals transformers' rotary
embedding of Qwen3-VL; the contiguous layout stays Qwen2.5-VL's."""

import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.errors import InputError
from stepjax.models import config as config_lib
from stepjax.models import language

torch = pytest.importorskip("torch")
qwen3_vl = pytest.importorskip("transformers.models.qwen3_vl.modeling_qwen3_vl")
qwen3_vl_config = pytest.importorskip(
  "transformers.models.qwen3_vl.configuration_qwen3_vl"
)

TOL = 1e-6  # float32 cos/sin of the same angles


@pytest.mark.parametrize(
  "head_dim, section, theta",
  [(32, (4, 6, 6), 1e6), (128, (24, 20, 20), 5e6), (64, (10, 11, 11), 1e4)],
)
def test_interleaved_cos_sin_equal_transformers(head_dim, section, theta):
  hf_cfg = qwen3_vl_config.Qwen3VLTextConfig(
    hidden_size=head_dim * 2,
    num_attention_heads=2,
    head_dim=head_dim,
    rope_parameters={
      "rope_type": "default",
      "rope_theta": theta,
      "mrope_section": list(section),
      "mrope_interleaved": True,
    },
  )
  rotary = qwen3_vl.Qwen3VLTextRotaryEmbedding(hf_cfg)
  rng = np.random.default_rng(0)
  # Text runs (equal axes) and an image grid (distinct t/h/w), 2 x 40.
  positions = rng.integers(0, 300, size=(3, 2, 40)).astype(np.int64)
  positions[:, :, :10] = positions[0, :, :10]
  x = torch.zeros(2, 40, head_dim)
  cos_hf, sin_hf = rotary(x, torch.from_numpy(positions))
  cfg = config_lib.TextConfig(
    hidden_size=head_dim * 2,
    num_heads=2,
    num_kv_heads=2,
    rope_theta=theta,
    mrope_section=section,
    mrope_interleaved=True,
  )
  cos, sin = language.mrope_cos_sin(jnp.asarray(positions), cfg, jnp.float32)
  np.testing.assert_allclose(np.asarray(cos), cos_hf.numpy(), atol=TOL)
  np.testing.assert_allclose(np.asarray(sin), sin_hf.numpy(), atol=TOL)


def test_axes_of_each_layout():
  contiguous = config_lib.TextConfig(
    hidden_size=64, num_heads=2, num_kv_heads=2, mrope_section=(4, 6, 6)
  )
  assert language.mrope_axes(contiguous).tolist() == [0] * 4 + [1] * 6 + [2] * 6
  interleaved = config_lib.TextConfig(
    hidden_size=64,
    num_heads=2,
    num_kv_heads=2,
    mrope_section=(4, 6, 6),
    mrope_interleaved=True,
  )
  # Width now turns with frequency 2 (the third highest), not 10-15.
  assert language.mrope_axes(interleaved).tolist() == [
    0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0
  ]  # fmt: skip


def test_interleaved_model_is_not_saved_as_qwen25vl(tmp_path):
  from stepjax.models import hf_convert, vlm

  cfg = config_lib.ModelConfig.tiny()
  cfg = cfg.replace(text={"mrope_interleaved": True})
  with pytest.raises(InputError, match="interleaved M-RoPE"):
    cfg.to_hf_dict()
  out = tmp_path / "export"
  with pytest.raises(InputError, match="interleaved M-RoPE"):
    hf_convert.save_hf(vlm.create(cfg), cfg, str(out))
  assert not out.exists()  # refused before writing anything


def test_job_config_switches_presets_only(tmp_path):
  import json

  from stepjax import config_utils
  from stepjax.data import tokenizer as tokenizer_lib
  from stepjax.train import policy

  info = tokenizer_lib.tokenizer_info(tokenizer_lib.load_tokenizer(""))
  config = config_utils.default_config()
  config.model.preset = "tiny"
  assert not policy.model_config(config, info).text.mrope_interleaved
  config.model.mrope_interleaved = True
  assert policy.model_config(config, info).text.mrope_interleaved
  hf = tmp_path / "hf"
  hf.mkdir()
  tiny = config_lib.ModelConfig.tiny(vocab_size=2048)
  (hf / "config.json").write_text(json.dumps(tiny.to_hf_dict()))
  config.init_from = str(hf)
  with pytest.raises(InputError, match="mrope_interleaved=True"):
    policy.model_config(config, info)
