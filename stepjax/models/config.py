"""Model configuration (Qwen2.5-VL, Qwen3-VL, InternVL3): dataclasses, presets.

`ModelConfig` holds a `VisionConfig`, a `TextConfig` and the special token
ids. Presets: `tiny()`, `tiny_alt()` (tests), `synthmed()` (CPU default),
`bench()`, `qwen25vl_3b()`, `qwen25vl_7b()`; Qwen3-VL: `qwen3vl_2b()`,
`qwen3vl_4b()`, `qwen3vl_8b()`, `tiny_qwen3()`, `tiny_qwen3_alt()` (tests),
`synthmed_qwen3()`; InternVL3 (`config_internvl`): `internvl3_1b()`,
`internvl3_2b()`, `internvl3_8b()`, `tiny_internvl()`,
`tiny_internvl_alt()` (tests), `synthmed_internvl()`. `from_hf_config(dict)`
/ `to_hf_dict()` translate transformers' `config.json` (`hf_config.py`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from stepjax.errors import InputError

# What the step-value head reads at each token (`ModelConfig.value_input`,
# `model.step_value_input`): its hidden state, or that and its step's mean.
VALUE_INPUTS = ("last", "last+step_mean")

_DTYPES = ("float32", "bfloat16", "float16")
FAMILIES = ("qwen2_5_vl", "qwen3_vl", "internvl")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Vision tower: a ViT with a 2x2 patch merger.

  Qwen2.5-VL (family qwen2_5_vl): RMSNorm, gated SiLU MLPs, window
  attention except in `fullatt_block_indexes`, no learned positions.
  Qwen3-VL (qwen3_vl): LayerNorm, GELU (tanh) MLPs, full attention in every
  block (`window_size` 0), a learned `num_position_embeddings` grid
  bilinearly resampled to each image, and DeepStack: the outputs of blocks
  `deepstack_visual_indexes` go through their own mergers and are added to
  the decoder's hidden state at the image tokens after its first layers.
  InternVL3 (internvl): InternViT on square tiles of `image_size` pixels
  (a CLS token, learned absolute positions, layer scale, GELU MLPs; the
  fields below `deepstack_visual_indexes`), then a 2x2 pixel shuffle and
  the LayerNorm + 2-layer projector; `temporal_patch_size` 1.
  """

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
  num_position_embeddings: int = 0
  deepstack_visual_indexes: tuple[int, ...] = ()
  # InternViT only (0: not InternViT): tile side in pixels.
  image_size: int = 0
  norm_type: str = "layer_norm"  # or "rms_norm"
  layer_norm_eps: float = 1e-6
  # Biases on q, k, v; RMSNorm over all heads of q and of k.
  attention_bias: bool = True
  qk_norm: bool = False
  layer_scale_init_value: float = 0.1
  # False: a final LayerNorm after the blocks (transformers' `layernorm`).
  use_mean_pooling: bool = True

  @property
  def tile_side(self) -> int:
    """Patches along one side of an InternViT tile."""
    return self.image_size // self.patch_size

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def num_full_attention_blocks(self) -> int:
    """Blocks attending over the whole frame (all of them without windows)."""
    if not self.window_size:
      return self.depth
    return len(self.fullatt_block_indexes)

  @property
  def num_deepstack(self) -> int:
    return len(self.deepstack_visual_indexes)

  @property
  def patch_dim(self) -> int:
    """P: length of one flattened patch row (C * Tp * p * p)."""
    return self.in_channels * self.temporal_patch_size * self.patch_size**2

  @property
  def merge_unit(self) -> int:
    return self.spatial_merge_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """Qwen2 / Qwen3 decoder with M-RoPE (Qwen3: `qk_norm`, no biases)."""

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
  # 0: hidden_size // num_heads (Qwen2); Qwen3 sets it (128 at every size).
  explicit_head_dim: int = 0
  # RMSNorm of each query and key head before the rotary (Qwen3).
  qk_norm: bool = False
  # Biases on the q, k, v projections (Qwen2: yes; Qwen3: no).
  attention_bias: bool = True

  @property
  def head_dim(self) -> int:
    return self.explicit_head_dim or self.hidden_size // self.num_heads


# Qwen3-VL's shared settings: the 2B/4B vision tower and the text decoder
# of the 4B/8B (presets change the sizes).
QWEN3VL_VISION_SMALL = VisionConfig(
  depth=24,
  hidden_size=1024,
  intermediate_size=4096,
  num_heads=16,
  patch_size=16,
  window_size=0,
  out_hidden_size=2560,
  fullatt_block_indexes=(),
  hidden_act="gelu_pytorch_tanh",
  num_position_embeddings=2304,
  deepstack_visual_indexes=(5, 11, 17),
)
QWEN3VL_TEXT = TextConfig(
  vocab_size=151936,
  hidden_size=2560,
  intermediate_size=9728,
  num_layers=36,
  num_heads=32,
  num_kv_heads=8,
  explicit_head_dim=128,
  rope_theta=5e6,
  mrope_section=(24, 20, 20),
  mrope_interleaved=True,
  max_position_embeddings=262144,
  qk_norm=True,
  attention_bias=False,
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The whole policy: vision tower, decoder, token ids, dtypes."""

  # Model family, as transformers' `model_type`: "qwen2_5_vl" or "qwen3_vl".
  # It picks the vision tower's layers and the HF conversion table; the
  # RL code never branches on it.
  family: str = "qwen2_5_vl"
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
  # What the step-value head reads: "last" (each token's hidden state) or
  # "last+step_mean" (and the mean over its step's tokens so far).
  value_input: str = "last"
  # Outputs of the grounding readout on the image features (SFT's
  # sft.grounding_weight; step_value.py); 0: none.
  grounding_outputs: int = 0

  def __post_init__(self):
    t, v = self.text, self.vision
    problems = []
    if self.value_input not in VALUE_INPUTS:
      problems.append(f"value_input must be one of {VALUE_INPUTS}")
    if t.hidden_size % t.num_heads and not t.explicit_head_dim:
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
    if any(not 0 <= i < v.depth for i in v.deepstack_visual_indexes):
      problems.append("deepstack_visual_indexes must lie in [0, vision.depth)")
    if v.num_deepstack > t.num_layers:
      problems.append("more deepstack_visual_indexes than decoder layers")
    problems += self._family_problems()
    if self.family not in FAMILIES:
      problems.append(f"family {self.family!r} must be one of {FAMILIES}")
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

  def _family_problems(self) -> list[str]:
    """What this family's layers need of the config."""
    t, v = self.text, self.vision
    side = math.isqrt(v.num_position_embeddings)
    if self.family == "internvl":
      return self._internvl_problems()
    if self.family == "qwen3_vl":
      wanted = {
        "vision.window_size": (v.window_size, 0),
        "vision.fullatt_block_indexes": (v.fullatt_block_indexes, ()),
        "text.qk_norm": (t.qk_norm, True),
        "text.attention_bias": (t.attention_bias, False),
        "text.mrope_interleaved": (t.mrope_interleaved, True),
      }
      if side < 2 or side * side != v.num_position_embeddings:
        return ["qwen3_vl: vision.num_position_embeddings must be a square"]
    else:
      wanted = {
        "vision.num_position_embeddings": (v.num_position_embeddings, 0),
        "vision.deepstack_visual_indexes": (v.deepstack_visual_indexes, ()),
        "text.qk_norm": (t.qk_norm, False),
        "text.attention_bias": (t.attention_bias, True),
      }
      if v.window_size <= 0:
        return [f"{self.family}: vision.window_size must be positive"]
    return [
      f"{self.family} needs {name}={want!r} (got {got!r})"
      for name, (got, want) in wanted.items()
      if got != want
    ]

  def _internvl_problems(self) -> list[str]:
    t, v = self.text, self.vision
    wanted = {
      "vision.window_size": (v.window_size, 0),
      "vision.fullatt_block_indexes": (v.fullatt_block_indexes, ()),
      "vision.num_position_embeddings": (v.num_position_embeddings, 0),
      "vision.deepstack_visual_indexes": (v.deepstack_visual_indexes, ()),
      "vision.temporal_patch_size": (v.temporal_patch_size, 1),
      "vision.spatial_merge_size": (v.spatial_merge_size, 2),
      "vision.hidden_act": (v.hidden_act, "gelu"),
      "vision.out_hidden_size": (v.out_hidden_size, t.hidden_size),
      "text.qk_norm": (t.qk_norm, False),
      "text.attention_bias": (t.attention_bias, True),
      "text.mrope_interleaved": (t.mrope_interleaved, False),
    }
    problems = [
      f"internvl needs {name}={want!r} (got {got!r})"
      for name, (got, want) in wanted.items()
      if got != want
    ]
    if v.image_size <= 0 or v.image_size % (v.patch_size * 2):
      problems.append(
        f"internvl: vision.image_size {v.image_size} must be a positive "
        f"multiple of 2 * patch_size ({2 * v.patch_size})"
      )
    if v.norm_type not in ("layer_norm", "rms_norm"):
      problems.append(
        f"internvl: vision.norm_type {v.norm_type!r} must be layer_norm or "
        "rms_norm"
      )
    return problems

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
    cls,
    vision: VisionConfig,
    text: TextConfig,
    tied: bool,
    family: str = "qwen2_5_vl",
  ) -> ModelConfig:
    """Small model whose special ids sit at the top of the vocabulary."""
    n = text.vocab_size
    return cls(
      family=family,
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

  # --------------------------------------------------- Qwen3-VL presets

  @classmethod
  def _qwen3vl(
    cls, vision: VisionConfig, text: TextConfig, tied: bool
  ) -> ModelConfig:
    """A full-size Qwen3-VL: Qwen's token ids, bf16."""
    return cls(
      family="qwen3_vl",
      vision=vision,
      text=text,
      tie_word_embeddings=tied,
      param_dtype="bfloat16",
      dtype="bfloat16",
    )

  @classmethod
  def qwen3vl_2b(cls) -> ModelConfig:
    return cls._qwen3vl(
      dataclasses.replace(QWEN3VL_VISION_SMALL, out_hidden_size=2048),
      dataclasses.replace(
        QWEN3VL_TEXT,
        hidden_size=2048,
        intermediate_size=6144,
        num_layers=28,
        num_heads=16,
      ),
      tied=True,
    )

  @classmethod
  def qwen3vl_4b(cls) -> ModelConfig:
    return cls._qwen3vl(
      QWEN3VL_VISION_SMALL,
      dataclasses.replace(
        QWEN3VL_TEXT, hidden_size=2560, intermediate_size=9728
      ),
      tied=True,
    )

  @classmethod
  def qwen3vl_8b(cls) -> ModelConfig:
    return cls._qwen3vl(
      dataclasses.replace(
        QWEN3VL_VISION_SMALL,
        depth=27,
        hidden_size=1152,
        intermediate_size=4304,
        out_hidden_size=4096,
        deepstack_visual_indexes=(8, 16, 24),
      ),
      dataclasses.replace(
        QWEN3VL_TEXT, hidden_size=4096, intermediate_size=12288
      ),
      tied=False,
    )

  @classmethod
  def tiny_qwen3(cls, vocab_size: int = 512) -> ModelConfig:
    """Tests: Qwen3-VL layers, head_dim 32 != hidden / heads, tied."""
    return cls._small(
      dataclasses.replace(
        QWEN3VL_VISION_SMALL,
        depth=3,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        num_position_embeddings=16,
        deepstack_visual_indexes=(0, 1),
      ),
      dataclasses.replace(
        QWEN3VL_TEXT,
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        explicit_head_dim=32,
        mrope_section=(4, 6, 6),
        rope_theta=1e6,
        max_position_embeddings=4096,
      ),
      tied=True,
      family="qwen3_vl",
    )

  @classmethod
  def tiny_qwen3_alt(cls, vocab_size: int = 384) -> ModelConfig:
    """Tests: 6x6 position grid, one DeepStack level, untied."""
    return cls._small(
      dataclasses.replace(
        QWEN3VL_VISION_SMALL,
        depth=4,
        hidden_size=48,
        intermediate_size=80,
        num_heads=3,
        out_hidden_size=96,
        num_position_embeddings=36,
        deepstack_visual_indexes=(2,),
      ),
      dataclasses.replace(
        QWEN3VL_TEXT,
        vocab_size=vocab_size,
        hidden_size=96,
        intermediate_size=160,
        num_layers=3,
        num_heads=6,
        num_kv_heads=3,
        explicit_head_dim=16,
        mrope_section=(2, 3, 3),
        rope_theta=10000.0,
        max_position_embeddings=4096,
      ),
      tied=False,
      family="qwen3_vl",
    )

  @classmethod
  def synthmed_qwen3(cls, vocab_size: int = 2048) -> ModelConfig:
    """SynthMed on CPU with Qwen3-VL's layers, the size of `synthmed()`."""
    return cls._small(
      dataclasses.replace(
        QWEN3VL_VISION_SMALL,
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        out_hidden_size=128,
        num_position_embeddings=64,
        deepstack_visual_indexes=(0,),
      ),
      dataclasses.replace(
        QWEN3VL_TEXT,
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        explicit_head_dim=32,
        mrope_section=(4, 6, 6),
        max_position_embeddings=8192,
      ),
      tied=True,
      family="qwen3_vl",
    )

  # ---------------------------------------------------- InternVL3 presets

  @classmethod
  def internvl3_1b(cls) -> ModelConfig:
    return cls._internvl("internvl3_1b")

  @classmethod
  def internvl3_2b(cls) -> ModelConfig:
    return cls._internvl("internvl3_2b")

  @classmethod
  def internvl3_8b(cls) -> ModelConfig:
    return cls._internvl("internvl3_8b")

  @classmethod
  def tiny_internvl(cls, vocab_size: int = 512) -> ModelConfig:
    return cls._internvl("tiny_internvl", vocab_size)

  @classmethod
  def tiny_internvl_alt(cls, vocab_size: int = 384) -> ModelConfig:
    return cls._internvl("tiny_internvl_alt", vocab_size)

  @classmethod
  def synthmed_internvl(cls, vocab_size: int = 2048) -> ModelConfig:
    return cls._internvl("synthmed_internvl", vocab_size)

  @classmethod
  def _internvl(cls, name: str, *args: Any) -> ModelConfig:
    from stepjax.models import config_internvl  # noqa: PLC0415 (imports us)

    return getattr(config_internvl, name)(*args)

  # ------------------------------------------------------ HF conversion

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any], **overrides: Any) -> ModelConfig:
    """A config from a transformers `config.json` dict (see hf_config)."""
    from stepjax.models import hf_config  # noqa: PLC0415 (it imports us)

    return hf_config.from_hf(hf, **overrides)

  def to_hf_dict(self) -> dict[str, Any]:
    """The nested `config.json` dict transformers reads (see hf_config)."""
    from stepjax.models import hf_config  # noqa: PLC0415 (it imports us)

    return hf_config.to_hf(self)
