"""Building the policy and step-value head from a job config.

The model's vocabulary and special token ids follow the tokenizer (the
SynthMed tokenizer for the small presets, the checkpoint's own tokenizer
for HF checkpoints), so prompts laid out by `stepjax.data.tokenizer` and
the model agree on `<|image_pad|>`, eos and padding.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
from etils import epath
from flax import nnx

from stepjax.data import synthmed
from stepjax.errors import InputError
from stepjax.models import config as config_lib
from stepjax.models import hf_convert, layers, step_value, vlm
from stepjax.train import sharding

_SMALL_PRESETS = (
  "tiny",
  "tiny_alt",
  "synthmed",
  "bench",
  "tiny_qwen3",
  "tiny_qwen3_alt",
  "synthmed_qwen3",
  "tiny_internvl",
  "tiny_internvl_alt",
  "synthmed_internvl",
)
_LARGE_PRESETS = (
  "qwen25vl_3b",
  "qwen25vl_7b",
  "qwen3vl_2b",
  "qwen3vl_4b",
  "qwen3vl_8b",
  "internvl3_1b",
  "internvl3_2b",
  "internvl3_8b",
)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def is_hf_dir(path: str) -> bool:
  """True for a transformers checkpoint directory: a config.json that names
  a `model_type` (or that does not parse, so that loading it reports the
  broken file). A training run's own config.json (what `stepjax
  experiment` writes into each run directory) is not one."""
  config = epath.Path(path) / "config.json" if path else None
  if config is None or not config.exists():
    return False
  try:
    return "model_type" in json.loads(config.read_text())
  except (ValueError, UnicodeDecodeError):
    return True


def model_config(config: Any, tok_info: Any) -> config_lib.ModelConfig:
  """The ModelConfig for `config.model` (or `config.init_from`'s HF dir).

  Args:
    config: the job config.
    tok_info: `stepjax.data.tokenizer.TokenizerInfo` of the tokenizer used.
  """
  init_from = config.init_from
  if init_from and is_hf_dir(init_from):
    cfg = config_lib.ModelConfig.from_hf_config(
      hf_convert.read_hf_config(init_from)
    )
  else:
    preset = config.model.preset
    if preset in _SMALL_PRESETS:
      vocab = _round_up(tok_info.vocab_size, 64)
      cfg = getattr(config_lib.ModelConfig, preset)(vocab_size=vocab)
    elif preset in _LARGE_PRESETS:
      cfg = getattr(config_lib.ModelConfig, preset)()
    else:
      raise InputError(
        f"--config.model.preset={preset!r}: expected one of "
        f"{_SMALL_PRESETS + _LARGE_PRESETS}"
      )
  if config.model.mrope_interleaved:
    if init_from and is_hf_dir(init_from):
      raise InputError(
        "--config.model.mrope_interleaved=True changes a Qwen2.5-VL "
        f"checkpoint's rotary layout ({init_from}); use it with a preset"
      )
    cfg = cfg.replace(
      text=dataclasses.replace(cfg.text, mrope_interleaved=True)
    )
  if tok_info.vocab_size > cfg.text.vocab_size:
    raise InputError(
      f"the tokenizer has {tok_info.vocab_size} tokens but the model's "
      f"vocabulary is {cfg.text.vocab_size}; use the checkpoint's own "
      "tokenizer (--config.tokenizer.path)"
    )
  return cfg.replace(
    eos_token_id=tok_info.eos_id,
    pad_token_id=tok_info.pad_id,
    image_pad_token_id=tok_info.image_pad_id,
    vision_start_token_id=tok_info.vision_start_id,
    vision_end_token_id=tok_info.vision_end_id,
    dtype=config.model.dtype,
    param_dtype=config.model.param_dtype,
    remat=config.model.remat,
    attention=attention_impl(config),
    value_hidden_size=max(int(config.model.step_value_hidden), 1),
    value_input=config.model.get("step_value_input", "last"),
    grounding_outputs=grounding_outputs(config),
  )


def grounding_outputs(config: Any) -> int:
  """Outputs of the grounding readout: SynthMed's findings when
  `sft.grounding_weight` > 0, else 0. It follows the job's config whatever
  data it is evaluated on, so a grounded run's checkpoints restore anywhere
  (training it on other data is refused by config_checks)."""
  if float(config.sft.grounding_weight) <= 0:
    return 0
  return len(synthmed.FINDINGS)


def attention_impl(config: Any) -> str:
  """`model.attention`; "auto" picks the row loop on CPU when the batch is
  not split over devices, else the dense batched einsum."""
  choice = config.model.attention
  if choice not in ("auto", "dense", "rows"):
    raise InputError(
      f"--config.model.attention={choice!r}: expected auto, dense or rows"
    )
  if choice != "auto":
    return choice
  sizes = {a: int(config.mesh[a]) for a in sharding.MESH_AXES}
  if -1 in (sizes["data"], sizes["fsdp"]):
    shape = dict(
      zip(
        sharding.MESH_AXES,
        sharding.resolve_mesh_shape(sizes, jax.device_count()),
      )
    )
  else:
    shape = sizes  # explicit (e.g. a TPU preset planned on this machine)
  on_cpu = jax.default_backend() == "cpu"
  return "rows" if on_cpu and shape["data"] * shape["fsdp"] == 1 else "dense"


@dataclasses.dataclass(frozen=True)
class Graphs:
  """Static halves of the split modules (kept outside jit)."""

  cfg: config_lib.ModelConfig
  policy: Any
  value: Any


@dataclasses.dataclass(frozen=True)
class Policy:
  """A policy ready to sample and score: what training, evaluation,
  `stepjax generate` and export pass around instead of a Trainer.

  graphs: static halves (`graphs.policy` is the sampler's graphdef).
  params / value_params: the policy's and step-value head's nnx.State
    pytrees (value_params None when the checkpoint has none, e.g. an HF
    directory).
  tokenizer / tok_info: the tokenizer and its special ids (stop ids, pad).
  mesh: the device mesh the params are placed on; sampling splits prompts
    over its batch axes (None: one device, no placement).
  """

  graphs: Graphs
  params: Any
  tokenizer: Any
  tok_info: Any
  mesh: Any = None
  value_params: Any = None

  @property
  def cfg(self) -> config_lib.ModelConfig:
    return self.graphs.cfg

  def with_params(self, params: Any, value_params: Any = None) -> Policy:
    """The same policy with other parameters (a training step's)."""
    return dataclasses.replace(self, params=params, value_params=value_params)


def abstract(cfg: config_lib.ModelConfig) -> tuple[Graphs, Any, Any]:
  """(graphs, abstract policy params, abstract value params): no memory."""
  with nnx.use_eager_sharding(False):
    policy_gd, policy_params = vlm.abstract(cfg)
    with layers.shapes_only():
      value = step_value.create(cfg, seed=0)
    value_gd, value_params = nnx.split(value, nnx.Param)
  return Graphs(cfg, policy_gd, value_gd), policy_params, value_params


def init(cfg: config_lib.ModelConfig, seed: int) -> tuple[Any, Any]:
  """Fresh (policy params, value params) as nnx.State pytrees."""
  with nnx.use_eager_sharding(False):
    _, policy_params = nnx.split(vlm.create(cfg, seed), nnx.Param)
    _, value_params = nnx.split(step_value.create(cfg, seed + 1), nnx.Param)
  return policy_params, value_params
