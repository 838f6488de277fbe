"""InternVL3 presets (family "internvl"): InternViT + projector + Qwen2.5.

InternVL3-1B/2B/8B pair InternViT-300M-448px (24 blocks, 1024 wide, 16
heads, 4096 MLP, 448-pixel tiles of 14-pixel patches: 256 tokens a tile)
with Qwen2.5-0.5B / 1.5B / 7B decoders and the `-hf` checkpoints' token
ids (`<img>` 151665, `</img>` 151666, `<IMG_CONTEXT>` 151667). The decoder
is Qwen2's, run with 1D positions (all three M-RoPE rows equal, which is
plain RoPE whatever `mrope_section` says; it is set to the whole rotary
width on the time axis). Tiny presets cover the other InternViT settings
(RMSNorm, q/k norms, no q/k/v biases, a final LayerNorm).
"""

from __future__ import annotations

import dataclasses

from stepjax.models.config import ModelConfig, TextConfig, VisionConfig

INTERNVIT_300M = VisionConfig(
  depth=24,
  hidden_size=1024,
  intermediate_size=4096,
  num_heads=16,
  patch_size=14,
  temporal_patch_size=1,
  spatial_merge_size=2,
  window_size=0,
  fullatt_block_indexes=(),
  hidden_act="gelu",
  image_size=448,
)


def text_config(**kw) -> TextConfig:
  """A Qwen2 decoder whose rotary runs on the time row only."""
  text = TextConfig(**{"max_position_embeddings": 32768, **kw})
  return dataclasses.replace(text, mrope_section=(text.head_dim // 2, 0, 0))


def _full(text: TextConfig) -> ModelConfig:
  """A full-size InternVL3: InternViT-300M, the -hf token ids, bf16."""
  return ModelConfig(
    family="internvl",
    vision=dataclasses.replace(
      INTERNVIT_300M, out_hidden_size=text.hidden_size
    ),
    text=text,
    tie_word_embeddings=False,
    vision_start_token_id=151665,
    vision_end_token_id=151666,
    image_pad_token_id=151667,
    param_dtype="bfloat16",
    dtype="bfloat16",
  )


# Qwen2.5 decoders: hidden, MLP, layers, heads, kv heads.
_DECODERS = {
  "1b": (896, 4864, 24, 14, 2),  # Qwen2.5-0.5B
  "2b": (1536, 8960, 28, 12, 2),  # Qwen2.5-1.5B
  "8b": (3584, 18944, 28, 28, 4),  # Qwen2.5-7B
}


def _released(size: str) -> ModelConfig:
  hidden, mlp, num_layers, heads, kv_heads = _DECODERS[size]
  return _full(
    text_config(
      vocab_size=151674,
      hidden_size=hidden,
      intermediate_size=mlp,
      num_layers=num_layers,
      num_heads=heads,
      num_kv_heads=kv_heads,
    )
  )


def internvl3_1b() -> ModelConfig:
  return _released("1b")


def internvl3_2b() -> ModelConfig:
  return _released("2b")


def internvl3_8b() -> ModelConfig:
  return _released("8b")


def _small(text: TextConfig, tied: bool, **vision) -> ModelConfig:
  """A small InternVL: InternViT-300M's settings but for `vision`."""
  vision = dataclasses.replace(
    INTERNVIT_300M, out_hidden_size=text.hidden_size, **vision
  )
  return ModelConfig._small(vision, text, tied, family="internvl")


def tiny_internvl(vocab_size: int = 512) -> ModelConfig:
  """Tests: 56-pixel tiles (4x4 patches, 4 tokens), LayerNorm, tied."""
  return _small(
    text_config(
      vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
      num_layers=2, num_heads=4, num_kv_heads=2, max_position_embeddings=4096,
    ),
    tied=True,
    depth=3, hidden_size=32, intermediate_size=64, num_heads=2, image_size=56,
  )  # fmt: skip


def tiny_internvl_alt(vocab_size: int = 384) -> ModelConfig:
  """Tests: 84-pixel tiles (6x6 patches, 9 tokens), RMSNorm, q/k norms,
  no q/k/v biases, a final LayerNorm, untied."""
  return _small(
    text_config(
      vocab_size=vocab_size, hidden_size=96, intermediate_size=160,
      num_layers=3, num_heads=6, num_kv_heads=3, rope_theta=10000.0,
      max_position_embeddings=4096,
    ),
    tied=False,
    depth=4, hidden_size=48, intermediate_size=80, num_heads=3,
    image_size=84, norm_type="rms_norm", attention_bias=False, qk_norm=True,
    layer_scale_init_value=0.5, use_mean_pooling=False,
  )  # fmt: skip


def synthmed_internvl(vocab_size: int = 2048) -> ModelConfig:
  """SynthMed on CPU with InternVL's layers, the size of `synthmed()`."""
  return _small(
    text_config(
      vocab_size=vocab_size, hidden_size=128, intermediate_size=384,
      num_layers=4, num_heads=4, num_kv_heads=2, max_position_embeddings=8192,
    ),
    tied=True,
    depth=2, hidden_size=64, intermediate_size=128, num_heads=4, image_size=56,
  )  # fmt: skip
