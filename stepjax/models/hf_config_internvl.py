"""transformers `InternVLConfig` `config.json` <-> `ModelConfig` (internvl).

The language model must be Qwen2 (`text_config.model_type` qwen2, as in
InternVL3); the vision settings map onto `VisionConfig`'s InternViT
fields. Settings stepjax does not implement (other projector activations
or downsample ratios, other vision feature layers, rope scaling other
than dynamic NTK, sliding windows, InternViT without absolute positions
or with a mask token) are refused with one line naming the setting.
Dynamic NTK scaling is read as plain RoPE, which it is for sequences up
to max_position_embeddings (32768 in InternVL3); `to_hf` writes plain
RoPE. The embeddings are tied when
the top-level `tie_word_embeddings` (default true) and text_config's
(default true) both say so: some -hf configs say true at the top and
false in text_config while the checkpoint holds a separate lm_head, which
transformers then loads untied too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from stepjax.errors import InputError
from stepjax.models import config_internvl
from stepjax.models.config import ModelConfig

# Top-level and vision settings that must have these values.
_FIXED = {
  "downsample_ratio": 0.5,
  "projector_hidden_act": "gelu",
  "vision_feature_layer": -1,
  "vision_feature_select_strategy": "default",
}
_ROPE_TYPES = ("default", "dynamic")
_FIXED_VISION = {
  "hidden_act": "gelu",
  "use_absolute_position_embeddings": True,
  "use_mask_token": False,
}


def _square(value: Any, name: str) -> int:
  sides = list(value) if isinstance(value, (list, tuple)) else [value] * 2
  if len(sides) != 2 or sides[0] != sides[1]:
    raise InputError(f"internvl: vision_config.{name} {value} must be square")
  return int(sides[0])


def _check(hf: dict, vis: dict, text: dict) -> None:
  wrong = [
    f"{k}={hf.get(k, v)!r} (need {v!r})"
    for k, v in _FIXED.items()
    if hf.get(k, v) != v
  ] + [
    f"vision_config.{k}={vis.get(k, v)!r} (need {v!r})"
    for k, v in _FIXED_VISION.items()
    if vis.get(k, v) != v
  ]
  if text.get("model_type", "qwen2") != "qwen2":
    wrong.append(f"text_config.model_type={text['model_type']!r} (need qwen2)")
  rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
  # Dynamic NTK (InternVL's 1B/2B configs) equals plain RoPE up to
  # max_position_embeddings: transformers only rescales longer sequences.
  if rope.get("rope_type", rope.get("type", "default")) not in _ROPE_TYPES:
    wrong.append(f"rope scaling {rope!r} (need none or dynamic)")
  if text.get("use_sliding_window"):
    wrong.append("text_config.use_sliding_window=true (need false)")
  if text.get("hidden_act", "silu") != "silu":
    wrong.append(f"text_config.hidden_act={text['hidden_act']!r} (need silu)")
  if wrong:
    raise InputError("internvl config.json not supported: " + "; ".join(wrong))


def from_hf(hf: dict[str, Any]) -> dict[str, Any]:
  """ModelConfig keyword arguments from an InternVL config dict."""
  vis = hf.get("vision_config") or {}
  text = hf.get("text_config") or {}
  _check(hf, vis, text)
  rope = text.get("rope_parameters") or {}
  d = config_internvl.INTERNVIT_300M
  t = config_internvl.text_config(
    vocab_size=text.get("vocab_size", 151674),
    hidden_size=text.get("hidden_size", 896),
    intermediate_size=text.get("intermediate_size", 4864),
    num_layers=text.get("num_hidden_layers", 24),
    num_heads=text.get("num_attention_heads", 14),
    num_kv_heads=text.get("num_key_value_heads") or 2,
    rms_norm_eps=text.get("rms_norm_eps", 1e-6),
    rope_theta=rope.get("rope_theta", text.get("rope_theta", 1e6)),
    max_position_embeddings=text.get("max_position_embeddings", 32768),
  )
  v = dataclasses.replace(
    d,
    depth=vis.get("num_hidden_layers", d.depth),
    hidden_size=vis.get("hidden_size", d.hidden_size),
    intermediate_size=vis.get("intermediate_size", d.intermediate_size),
    num_heads=vis.get("num_attention_heads", d.num_heads),
    in_channels=vis.get("num_channels", 3),
    patch_size=_square(vis.get("patch_size", 14), "patch_size"),
    image_size=_square(vis.get("image_size", 448), "image_size"),
    norm_type=vis.get("norm_type", d.norm_type),
    layer_norm_eps=vis.get("layer_norm_eps", d.layer_norm_eps),
    attention_bias=vis.get("attention_bias", False),
    qk_norm=vis.get("use_qk_norm", False),
    layer_scale_init_value=vis.get(
      "layer_scale_init_value", d.layer_scale_init_value
    ),
    use_mean_pooling=vis.get("use_mean_pooling", True),
    out_hidden_size=t.hidden_size,
  )
  eos = text.get("eos_token_id", 151645)
  bos = text.get("bos_token_id", 151643)
  pad = text.get("pad_token_id")
  return dict(
    family="internvl",
    vision=v,
    text=t,
    tie_word_embeddings=bool(hf.get("tie_word_embeddings", True))
    and bool(text.get("tie_word_embeddings", True)),
    bos_token_id=bos,
    eos_token_id=eos[0] if isinstance(eos, list) else eos,
    pad_token_id=bos if pad is None else pad,
    vision_start_token_id=hf.get("vision_start_token_id", 151665),
    vision_end_token_id=hf.get("vision_end_token_id", 151666),
    image_pad_token_id=hf.get("image_token_id", 151667),
    video_pad_token_id=hf.get("video_token_id", 151656),
    initializer_range=text.get("initializer_range", 0.02),
  )


def to_hf(cfg: ModelConfig, decoder: dict[str, Any]) -> dict[str, Any]:
  """The nested config.json dict `InternVLConfig` accepts; `decoder`: the
  text_config keys all families share (hf_config)."""
  v, t = cfg.vision, cfg.text
  vision = {
    "model_type": "internvl_vision",
    "num_hidden_layers": v.depth,
    "hidden_size": v.hidden_size,
    "intermediate_size": v.intermediate_size,
    "num_attention_heads": v.num_heads,
    "num_channels": v.in_channels,
    "patch_size": [v.patch_size, v.patch_size],
    "image_size": [v.image_size, v.image_size],
    "norm_type": v.norm_type,
    "layer_norm_eps": v.layer_norm_eps,
    "attention_bias": v.attention_bias,
    "use_qk_norm": v.qk_norm,
    "layer_scale_init_value": v.layer_scale_init_value,
    "use_mean_pooling": v.use_mean_pooling,
    "hidden_act": "gelu",
    "initializer_range": cfg.initializer_range,
  }
  text = {
    "model_type": "qwen2",
    **decoder,
    "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta},
    "use_sliding_window": False,
    "tie_word_embeddings": cfg.tie_word_embeddings,
  }
  return {
    "model_type": "internvl",
    "architectures": ["InternVLForConditionalGeneration"],
    "image_token_id": cfg.image_pad_token_id,
    "image_seq_length": v.tile_side**2 // v.merge_unit,
    "vision_start_token_id": cfg.vision_start_token_id,
    "vision_end_token_id": cfg.vision_end_token_id,
    "video_token_id": cfg.video_pad_token_id,
    **_FIXED,
    "tie_word_embeddings": cfg.tie_word_embeddings,
    "dtype": cfg.param_dtype,
    "vision_config": vision,
    "text_config": text,
  }
