"""Qwen2.5-VL model configuration: frozen dataclasses with named presets.

`ModelConfig` holds a `VisionConfig`, a `TextConfig` and the special token
ids. Presets: `tiny()`, `tiny_alt()` (tests), `synthmed()` (CPU default),
`bench()`, `qwen25vl_3b()`, `qwen25vl_7b()`. `from_hf_config(dict)` reads a
transformers `config.json` dict (nested v5 layout or the older flat one);
`to_hf_dict()` writes the nested layout `Qwen2_5_VLConfig` accepts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from stepjax.errors import InputError

_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Vision tower (ViT with window attention and a 2x2 patch merger)."""

  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112
  out_hidden_size: int = 2048
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  tokens_per_second: int = 2
  rope_theta: float = 10000.0
  hidden_act: str = "silu"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """P: length of one flattened patch row (C * Tp * p * p)."""
    return self.in_channels * self.temporal_patch_size * self.patch_size**2

  @property
  def merge_unit(self) -> int:
    return self.spatial_merge_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """Qwen2 decoder with M-RoPE."""

  vocab_size: int = 151936
  hidden_size: int = 2048
  intermediate_size: int = 11008
  num_layers: int = 36
  num_heads: int = 16
  num_kv_heads: int = 2
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1e6
  mrope_section: tuple[int, int, int] = (16, 24, 24)
  # Qwen3-VL's interleaved M-RoPE: rotary frequency j follows height when
  # j % 3 == 1 (j < 3 * sections[1]), width when j % 3 == 2 (j < 3 *
  # sections[2]), else time; so every axis gets high and low frequencies.
  # False: Qwen2.5-VL's contiguous sections (time highest, width lowest).
  mrope_interleaved: bool = False
  max_position_embeddings: int = 128000
  hidden_act: str = "silu"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The whole policy: vision tower, decoder, token ids, dtypes."""

  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  tie_word_embeddings: bool = True
  bos_token_id: int = 151643
  eos_token_id: int = 151645
  pad_token_id: int = 151643
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  image_pad_token_id: int = 151655
  video_pad_token_id: int = 151656
  initializer_range: float = 0.02
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: bool = False
  # Decoder attention without a KV cache: "dense" (the whole batch in one
  # einsum; right for sharded batches on accelerators) or "rows" (a loop
  # over sequences with recomputation; much faster on CPU, where the
  # per-row scores fit in cache; not for batch-sharded meshes).
  attention: str = "dense"
  # Width of the step-value head's hidden layer (step_value.py).
  value_hidden_size: int = 256
  # Outputs of the grounding readout on the image features (SFT's
  # sft.grounding_weight; step_value.py); 0: none.
  grounding_outputs: int = 0

  def __post_init__(self):
    t, v = self.text, self.vision
    problems = []
    if t.hidden_size % t.num_heads:
      problems.append("text.hidden_size must divide by text.num_heads")
    if t.num_heads % t.num_kv_heads:
      problems.append("text.num_heads must divide by text.num_kv_heads")
    if 2 * sum(t.mrope_section) != t.head_dim:
      problems.append(
        f"2 * sum(mrope_section {t.mrope_section}) must equal text head_dim"
        f" {t.head_dim}"
      )
    if v.hidden_size % v.num_heads or v.head_dim % 4:
      problems.append("vision head_dim must be an integer multiple of 4")
    if v.window_size % (v.patch_size * v.spatial_merge_size):
      problems.append(
        "vision.window_size must divide by patch_size * spatial_merge_size"
      )
    if any(not 0 <= i < v.depth for i in v.fullatt_block_indexes):
      problems.append("fullatt_block_indexes must lie in [0, vision.depth)")
    if self.attention not in ("dense", "rows"):
      problems.append(f"attention {self.attention!r} must be dense or rows")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in _DTYPES:
        problems.append(f"{name} must be one of {_DTYPES}")
    ids = (
      self.eos_token_id,
      self.pad_token_id,
      self.vision_start_token_id,
      self.vision_end_token_id,
      self.image_pad_token_id,
    )
    if any(not 0 <= i < t.vocab_size for i in ids):
      problems.append(f"special token ids {ids} must be < vocab {t.vocab_size}")
    if problems:
      raise InputError("Invalid ModelConfig: " + "; ".join(problems))

  def replace(self, **overrides: Any) -> ModelConfig:
    """Copy with overrides; `vision=`/`text=` may be dicts of field values."""
    for key in ("vision", "text"):
      if isinstance(overrides.get(key), dict):
        overrides[key] = dataclasses.replace(
          getattr(self, key), **overrides[key]
        )
    return dataclasses.replace(self, **overrides)

  # ------------------------------------------------------------- presets

  @classmethod
  def qwen25vl_3b(cls) -> ModelConfig:
    return cls(
      vision=VisionConfig(out_hidden_size=2048),
      text=TextConfig(),
      tie_word_embeddings=True,
      param_dtype="bfloat16",
      dtype="bfloat16",
    )

  @classmethod
  def qwen25vl_7b(cls) -> ModelConfig:
    return cls(
      vision=VisionConfig(out_hidden_size=3584),
      text=TextConfig(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
      ),
      tie_word_embeddings=False,
      param_dtype="bfloat16",
      dtype="bfloat16",
    )

  @classmethod
  def _small(
    cls, vision: VisionConfig, text: TextConfig, tied: bool
  ) -> ModelConfig:
    """Small model whose special ids sit at the top of the vocabulary."""
    n = text.vocab_size
    return cls(
      vision=vision,
      text=text,
      tie_word_embeddings=tied,
      bos_token_id=n - 7,
      eos_token_id=n - 6,
      pad_token_id=n - 5,
      vision_start_token_id=n - 4,
      vision_end_token_id=n - 3,
      image_pad_token_id=n - 2,
      video_pad_token_id=n - 1,
    )

  @classmethod
  def tiny(cls, vocab_size: int = 512) -> ModelConfig:
    """Tests: window of 2x2 merged tokens, full attention on block 1."""
    return cls._small(
      VisionConfig(
        depth=3,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        window_size=56,
        out_hidden_size=64,
        fullatt_block_indexes=(1,),
      ),
      TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        mrope_section=(2, 3, 3),
        max_position_embeddings=4096,
      ),
      tied=True,
    )

  @classmethod
  def tiny_alt(cls, vocab_size: int = 384) -> ModelConfig:
    """Tests: 3x3 windows (ragged at edges), other full blocks, untied."""
    return cls._small(
      VisionConfig(
        depth=4,
        hidden_size=48,
        intermediate_size=80,
        num_heads=3,
        window_size=84,
        out_hidden_size=96,
        fullatt_block_indexes=(0, 3),
      ),
      TextConfig(
        vocab_size=vocab_size,
        hidden_size=96,
        intermediate_size=160,
        num_layers=3,
        num_heads=6,
        num_kv_heads=3,
        mrope_section=(2, 2, 4),
        rope_theta=10000.0,
        max_position_embeddings=4096,
      ),
      tied=False,
    )

  @classmethod
  def synthmed(cls, vocab_size: int = 2048) -> ModelConfig:
    """CPU default for SynthMed runs: a few million parameters."""
    return cls._small(
      VisionConfig(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        window_size=56,
        out_hidden_size=128,
        fullatt_block_indexes=(1,),
      ),
      TextConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        mrope_section=(4, 6, 6),
        max_position_embeddings=8192,
      ),
      tied=True,
    )

  @classmethod
  def bench(cls, vocab_size: int = 4096) -> ModelConfig:
    """Benchmark model, about 5.4M parameters (untied lm_head)."""
    return cls._small(
      VisionConfig(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        window_size=56,
        out_hidden_size=256,
        fullatt_block_indexes=(1,),
      ),
      TextConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=768,
        num_layers=4,
        num_heads=8,
        num_kv_heads=2,
        mrope_section=(4, 6, 6),
        max_position_embeddings=8192,
      ),
      tied=False,
    )

  # ------------------------------------------------------ HF conversion

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any], **overrides: Any) -> ModelConfig:
    """Builds a config from a transformers Qwen2.5-VL `config.json` dict."""
    model_type = hf.get("model_type")
    if model_type != "qwen2_5_vl":
      raise InputError(
        f"Unsupported model_type {model_type!r}: only 'qwen2_5_vl' "
        "(Qwen2.5-VL) checkpoints can be converted."
      )
    text = dict(hf.get("text_config") or {})
    for key, value in hf.items():  # Older flat layout keeps text at top.
      if key not in ("vision_config", "text_config"):
        text.setdefault(key, value)
    vis = hf.get("vision_config") or {}
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in (
      "default",
      "mrope",
    ):
      raise InputError(f"Unsupported rope scaling {rope!r} in config.json")
    if text.get("use_sliding_window"):
      raise InputError("Sliding-window attention is not supported.")
    if (
      vis.get("hidden_act", "silu") != "silu"
      or text.get("hidden_act", "silu") != "silu"
    ):
      raise InputError("Only hidden_act='silu' is supported.")
    d = VisionConfig()
    vrope = vis.get("rope_parameters") or {}
    vision = VisionConfig(
      depth=vis.get("depth", d.depth),
      hidden_size=vis.get("hidden_size", d.hidden_size),
      intermediate_size=vis.get("intermediate_size", d.intermediate_size),
      num_heads=vis.get("num_heads", d.num_heads),
      in_channels=vis.get("in_channels", vis.get("in_chans", 3)),
      patch_size=vis.get("patch_size", d.patch_size),
      temporal_patch_size=vis.get("temporal_patch_size", d.temporal_patch_size),
      spatial_merge_size=vis.get("spatial_merge_size", d.spatial_merge_size),
      window_size=vis.get("window_size", d.window_size),
      out_hidden_size=vis.get("out_hidden_size", d.out_hidden_size),
      fullatt_block_indexes=tuple(
        vis.get("fullatt_block_indexes", d.fullatt_block_indexes)
      ),
      tokens_per_second=vis.get("tokens_per_second", d.tokens_per_second),
      rope_theta=vrope.get("rope_theta", d.rope_theta),
    )
    t = TextConfig()
    tc = TextConfig(
      vocab_size=text.get("vocab_size", t.vocab_size),
      hidden_size=text.get("hidden_size", t.hidden_size),
      intermediate_size=text.get("intermediate_size", t.intermediate_size),
      num_layers=text.get("num_hidden_layers", t.num_layers),
      num_heads=text.get("num_attention_heads", t.num_heads),
      num_kv_heads=text.get("num_key_value_heads")
      or text.get("num_attention_heads", t.num_heads),
      rms_norm_eps=text.get("rms_norm_eps", t.rms_norm_eps),
      rope_theta=rope.get("rope_theta", text.get("rope_theta", t.rope_theta)),
      mrope_section=tuple(rope.get("mrope_section", t.mrope_section)),
      max_position_embeddings=text.get(
        "max_position_embeddings", t.max_position_embeddings
      ),
    )
    eos = text.get("eos_token_id", 151645)
    if isinstance(eos, list):
      eos = eos[0]
    tied = bool(hf.get("tie_word_embeddings", False)) or bool(
      (hf.get("text_config") or {}).get("tie_word_embeddings", False)
    )
    pad = text.get("pad_token_id")
    bos = text.get("bos_token_id", 151643)
    kwargs = dict(
      vision=vision,
      text=tc,
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
    stored = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    if stored in _DTYPES:  # Compute in the checkpoint's dtype by default.
      kwargs.update(param_dtype=stored, dtype=stored)
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf_dict(self) -> dict[str, Any]:
    """The nested `config.json` dict transformers' Qwen2_5_VLConfig reads."""
    v, t = self.vision, self.text
    if t.mrope_interleaved:
      raise InputError(
        "this model uses interleaved M-RoPE (model.mrope_interleaved, "
        "Qwen3-VL's layout), which a Qwen2.5-VL checkpoint cannot describe;"
        " it can be trained and evaluated but not saved in HF format"
      )
    torch_dtype = self.param_dtype
    return {
      "model_type": "qwen2_5_vl",
      "architectures": ["Qwen2_5_VLForConditionalGeneration"],
      "image_token_id": self.image_pad_token_id,
      "video_token_id": self.video_pad_token_id,
      "vision_start_token_id": self.vision_start_token_id,
      "vision_end_token_id": self.vision_end_token_id,
      "tie_word_embeddings": self.tie_word_embeddings,
      "dtype": torch_dtype,
      "vision_config": {
        "model_type": "qwen2_5_vl_vision",
        "depth": v.depth,
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_heads": v.num_heads,
        "in_channels": v.in_channels,
        "patch_size": v.patch_size,
        "temporal_patch_size": v.temporal_patch_size,
        "spatial_merge_size": v.spatial_merge_size,
        "window_size": v.window_size,
        "out_hidden_size": v.out_hidden_size,
        "fullatt_block_indexes": list(v.fullatt_block_indexes),
        "tokens_per_second": v.tokens_per_second,
        "hidden_act": "silu",
        "initializer_range": self.initializer_range,
        "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
      },
      "text_config": {
        "model_type": "qwen2_5_vl_text",
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads,
        "num_key_value_heads": t.num_kv_heads,
        "rms_norm_eps": t.rms_norm_eps,
        "max_position_embeddings": t.max_position_embeddings,
        "hidden_act": "silu",
        "initializer_range": self.initializer_range,
        "rope_parameters": {
          "rope_type": "default",
          "rope_theta": t.rope_theta,
          "mrope_section": list(t.mrope_section),
        },
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id,
        "pad_token_id": self.pad_token_id,
        "use_sliding_window": False,
      },
    }
