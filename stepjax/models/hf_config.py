"""transformers `config.json` <-> `ModelConfig`, for both families.

`from_hf(dict)` reads Qwen2.5-VL (`model_type` qwen2_5_vl) and Qwen3-VL
(qwen3_vl) configs, in transformers' nested v5 layout or the older one
(text settings at the top level, `rope_scaling` and `rope_theta` beside
it). `to_hf(cfg)` writes the nested layout `Qwen2_5_VLConfig` or
`Qwen3VLConfig` accepts. InternVL (`model_type` internvl) goes through
`hf_config_internvl`. Anything stepjax does not implement (rope
scaling, sliding windows, other activations, Qwen3 attention biases) is
refused with one line naming the setting.
"""

from __future__ import annotations

from typing import Any

from stepjax.errors import InputError
from stepjax.models import hf_config_internvl
from stepjax.models.config import (
  _DTYPES,
  QWEN3VL_TEXT,
  QWEN3VL_VISION_SMALL,
  ModelConfig,
  TextConfig,
  VisionConfig,
)

_ARCHITECTURES = {
  "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
  "qwen3_vl": "Qwen3VLForConditionalGeneration",
  "internvl": "InternVLForConditionalGeneration",
}
# Activations each family's layers implement: (vision, text).
_ACTIVATIONS = {
  "qwen2_5_vl": ("silu", "silu"),
  "qwen3_vl": ("gelu_pytorch_tanh", "silu"),
}


def _text_dict(hf: dict[str, Any]) -> dict[str, Any]:
  """text_config with the older layout's top-level keys filled in."""
  text = dict(hf.get("text_config") or {})
  for key, value in hf.items():
    if key not in ("vision_config", "text_config"):
      text.setdefault(key, value)
  return text


def _check_supported(family: str, text: dict, vis: dict, rope: dict) -> None:
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "mrope"):
    raise InputError(f"Unsupported rope scaling {rope!r} in config.json")
  if text.get("use_sliding_window"):
    raise InputError("Sliding-window attention is not supported.")
  want_vis, want_text = _ACTIVATIONS[family]
  got = (vis.get("hidden_act", want_vis), text.get("hidden_act", want_text))
  if got != (want_vis, want_text):
    raise InputError(
      f"{family}: hidden_act (vision, text) must be {(want_vis, want_text)}; "
      f"config.json has {got}"
    )
  if family == "qwen3_vl" and text.get("attention_bias"):
    raise InputError("qwen3_vl: attention_bias=true is not supported")


def _vision(family: str, vis: dict[str, Any]) -> VisionConfig:
  d = QWEN3VL_VISION_SMALL if family == "qwen3_vl" else VisionConfig()
  kw = dict(
    depth=vis.get("depth", d.depth),
    hidden_size=vis.get("hidden_size", d.hidden_size),
    intermediate_size=vis.get("intermediate_size", d.intermediate_size),
    num_heads=vis.get("num_heads", d.num_heads),
    in_channels=vis.get("in_channels", vis.get("in_chans", 3)),
    patch_size=vis.get("patch_size", d.patch_size),
    temporal_patch_size=vis.get("temporal_patch_size", d.temporal_patch_size),
    spatial_merge_size=vis.get("spatial_merge_size", d.spatial_merge_size),
    out_hidden_size=vis.get("out_hidden_size", d.out_hidden_size),
    rope_theta=(vis.get("rope_parameters") or {}).get(
      "rope_theta", d.rope_theta
    ),
    hidden_act=d.hidden_act,
  )
  if family == "qwen3_vl":
    kw.update(
      window_size=0,
      fullatt_block_indexes=(),
      num_position_embeddings=vis.get(
        "num_position_embeddings", d.num_position_embeddings
      ),
      deepstack_visual_indexes=tuple(
        vis.get("deepstack_visual_indexes", d.deepstack_visual_indexes)
      ),
    )
  else:
    kw.update(
      window_size=vis.get("window_size", d.window_size),
      fullatt_block_indexes=tuple(
        vis.get("fullatt_block_indexes", d.fullatt_block_indexes)
      ),
      tokens_per_second=vis.get("tokens_per_second", d.tokens_per_second),
    )
  return VisionConfig(**kw)


def _text(family: str, text: dict[str, Any], rope: dict) -> TextConfig:
  d = QWEN3VL_TEXT if family == "qwen3_vl" else TextConfig()
  heads = text.get("num_attention_heads", d.num_heads)
  hidden = text.get("hidden_size", d.hidden_size)
  kw = dict(
    vocab_size=text.get("vocab_size", d.vocab_size),
    hidden_size=hidden,
    intermediate_size=text.get("intermediate_size", d.intermediate_size),
    num_layers=text.get("num_hidden_layers", d.num_layers),
    num_heads=heads,
    num_kv_heads=text.get("num_key_value_heads") or heads,
    rms_norm_eps=text.get("rms_norm_eps", d.rms_norm_eps),
    rope_theta=rope.get("rope_theta", text.get("rope_theta", d.rope_theta)),
    mrope_section=tuple(rope.get("mrope_section", d.mrope_section)),
    max_position_embeddings=text.get(
      "max_position_embeddings", d.max_position_embeddings
    ),
  )
  if family == "qwen3_vl":
    kw.update(
      explicit_head_dim=text.get("head_dim") or hidden // heads,
      qk_norm=True,
      attention_bias=False,
      mrope_interleaved=True,
    )
  return TextConfig(**kw)


def from_hf(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
  """A ModelConfig from a transformers Qwen2.5-VL, Qwen3-VL or InternVL
  config dict."""
  family = hf.get("model_type")
  if family not in _ARCHITECTURES:
    raise InputError(
      f"Unsupported model_type {family!r}: stepjax converts "
      f"{sorted(_ARCHITECTURES)} checkpoints (Qwen2.5-VL, Qwen3-VL, "
      "InternVL)."
    )
  if family == "internvl":
    return _finish(hf, hf_config_internvl.from_hf(hf), overrides)
  text = _text_dict(hf)
  vis = hf.get("vision_config") or {}
  rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
  _check_supported(family, text, vis, rope)
  eos = text.get("eos_token_id", 151645)
  if isinstance(eos, list):
    eos = eos[0]
  tied = bool(hf.get("tie_word_embeddings", False)) or bool(
    (hf.get("text_config") or {}).get("tie_word_embeddings", False)
  )
  pad = text.get("pad_token_id")
  bos = text.get("bos_token_id", 151643)
  kwargs = dict(
    family=family,
    vision=_vision(family, vis),
    text=_text(family, text, rope),
    tie_word_embeddings=tied,
    bos_token_id=bos,
    eos_token_id=eos,
    pad_token_id=bos if pad is None else pad,
    vision_start_token_id=hf.get("vision_start_token_id", 151652),
    vision_end_token_id=hf.get("vision_end_token_id", 151653),
    image_pad_token_id=hf.get("image_token_id", 151655),
    video_pad_token_id=hf.get("video_token_id", 151656),
    initializer_range=text.get("initializer_range", 0.02),
  )
  return _finish(hf, kwargs, overrides)


def _finish(hf: dict, kwargs: dict, overrides: dict) -> ModelConfig:
  """The config with the checkpoint's dtype and the caller's overrides."""
  stored = hf.get("dtype") or hf.get("torch_dtype") or "float32"
  if stored in _DTYPES:  # Compute in the checkpoint's dtype by default.
    kwargs.update(param_dtype=stored, dtype=stored)
  kwargs.update(overrides)
  return ModelConfig(**kwargs)


def _vision_dict(cfg: ModelConfig) -> dict[str, Any]:
  v = cfg.vision
  out = {
    "model_type": f"{cfg.family}_vision",
    "depth": v.depth,
    "hidden_size": v.hidden_size,
    "intermediate_size": v.intermediate_size,
    "num_heads": v.num_heads,
    "in_channels": v.in_channels,
    "patch_size": v.patch_size,
    "temporal_patch_size": v.temporal_patch_size,
    "spatial_merge_size": v.spatial_merge_size,
    "out_hidden_size": v.out_hidden_size,
    "hidden_act": _ACTIVATIONS[cfg.family][0],
    "initializer_range": cfg.initializer_range,
    "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
  }
  if cfg.family == "qwen3_vl":
    out["num_position_embeddings"] = v.num_position_embeddings
    out["deepstack_visual_indexes"] = list(v.deepstack_visual_indexes)
  else:
    out["window_size"] = v.window_size
    out["fullatt_block_indexes"] = list(v.fullatt_block_indexes)
    out["tokens_per_second"] = v.tokens_per_second
  return out


def _decoder_dict(cfg: ModelConfig) -> dict[str, Any]:
  """The text_config keys every family's decoder shares."""
  t = cfg.text
  return {
    "vocab_size": t.vocab_size,
    "hidden_size": t.hidden_size,
    "intermediate_size": t.intermediate_size,
    "num_hidden_layers": t.num_layers,
    "num_attention_heads": t.num_heads,
    "num_key_value_heads": t.num_kv_heads,
    "rms_norm_eps": t.rms_norm_eps,
    "max_position_embeddings": t.max_position_embeddings,
    "hidden_act": "silu",
    "initializer_range": cfg.initializer_range,
    "bos_token_id": cfg.bos_token_id,
    "eos_token_id": cfg.eos_token_id,
    "pad_token_id": cfg.pad_token_id,
  }


def _text_out(cfg: ModelConfig) -> dict[str, Any]:
  t = cfg.text
  rope = {
    "rope_type": "default",
    "rope_theta": t.rope_theta,
    "mrope_section": list(t.mrope_section),
  }
  out = {
    "model_type": f"{cfg.family}_text",
    **_decoder_dict(cfg),
    "rope_parameters": rope,
  }
  if cfg.family == "qwen3_vl":
    rope["mrope_interleaved"] = True
    out.update(head_dim=t.head_dim, attention_bias=False)
  else:
    out["use_sliding_window"] = False
  return out


def to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """The nested `config.json` dict of cfg's family."""
  if cfg.family == "internvl":
    return hf_config_internvl.to_hf(cfg, _decoder_dict(cfg))
  if cfg.family == "qwen2_5_vl" and cfg.text.mrope_interleaved:
    raise InputError(
      "this model uses interleaved M-RoPE (model.mrope_interleaved, "
      "Qwen3-VL's layout), which a Qwen2.5-VL checkpoint cannot describe;"
      " it can be trained and evaluated but not saved in HF format"
    )
  return {
    "model_type": cfg.family,
    "architectures": [_ARCHITECTURES[cfg.family]],
    "image_token_id": cfg.image_pad_token_id,
    "video_token_id": cfg.video_pad_token_id,
    "vision_start_token_id": cfg.vision_start_token_id,
    "vision_end_token_id": cfg.vision_end_token_id,
    "tie_word_embeddings": cfg.tie_word_embeddings,
    "dtype": cfg.param_dtype,
    "vision_config": _vision_dict(cfg),
    "text_config": _text_out(cfg),
  }
