"""transformers Qwen2.5-VL / Qwen3-VL / InternVL checkpoints <-> stepjax
parameters.

`RULES[family]` is the whole mapping of a family: HF tensor name pattern ->
our parameter path -> transform (the decoder's rules are shared; a Qwen3
checkpoint simply has no q/k/v biases and a Qwen2 one no q/k norms).
`{i}` stands for a layer/block number. Transforms:
  linear1 / linear2: HF Linear weight [out, in] -> our kernel
    [in..., out...] (transpose, then reshape; `2` = two input axes, as in
    o_proj [heads, head_dim, embed]);
  vector: reshape (biases [out...], norm scales);
  conv: Conv3d weight [D, C, Tp, p, p] (or Conv2d [D, C, p, p], family
    internvl) -> kernel [C*Tp*p*p, D];
  batch1: drop a leading batch axis of 1 (InternViT's CLS token and
    position table, [1, 1, D] and [1, R+1, D]);
  copy: same layout (token embedding).
Older checkpoints (`visual.*`, `model.layers.*`, as on the Hub; for
InternVL `vision_tower.*`, `multi_modal_projector.*`, `language_model.*`,
as transformers' own llava conversion renames them) are renamed
to the transformers v5 layout first (`LEGACY_RENAMES`). `save_hf` writes the
v5 layout. Safetensors go through the `safetensors` library: read tensor by
tensor (`safe_open`, memory-mapped), each placed on its devices before the
next is read, so a 7B checkpoint is never fully resident on the host. A file
that is not readable safetensors raises `CheckpointFileError` (a
`UserError`) naming it.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import jax

# Registers numpy's "bfloat16" dtype name, which safetensors' numpy framework
# looks up for BF16 tensors: without it reading fails with "data type
# 'bfloat16' not understood". (jax imports it as well; this makes the need
# explicit.)
import ml_dtypes  # noqa: F401
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx

from stepjax import errors
from stepjax.models import config as config_lib
from stepjax.models import vlm

_VB = "model.visual.blocks.{i}."
_LL = "model.language_model.layers.{i}."
_OB = "visual.blocks.{i}."
_OL = "language.layers.{i}."


def _linear(hf: str, ours: str, bias: bool = True, tf: str = "linear1"):
  """Rules of one Linear (weight and, with `bias`, its bias)."""
  rules = [(hf + ".weight", ours + ".kernel", tf)]
  if bias:
    rules.append((hf + ".bias", ours + ".bias", "vector"))
  return tuple(rules)


def _norm(hf: str, ours: str, bias: bool = False):
  """Rules of an RMSNorm (scale) or a LayerNorm (scale and bias)."""
  rules = [(hf + ".weight", ours + ".scale", "vector")]
  if bias:
    rules.append((hf + ".bias", ours + ".bias", "vector"))
  return tuple(rules)


LANGUAGE_RULES = (
  ("model.language_model.embed_tokens.weight", "language.embed", "copy"),
  *_norm("model.language_model.norm", "language.final_norm"),
  *_linear(_LL + "self_attn.q_proj", _OL + "attn.q"),
  *_linear(_LL + "self_attn.k_proj", _OL + "attn.k"),
  *_linear(_LL + "self_attn.v_proj", _OL + "attn.v"),
  *_linear(_LL + "self_attn.o_proj", _OL + "attn.o", False, "linear2"),
  *_norm(_LL + "self_attn.q_norm", _OL + "attn.q_norm"),
  *_norm(_LL + "self_attn.k_norm", _OL + "attn.k_norm"),
  *_linear(_LL + "mlp.gate_proj", _OL + "mlp.gate", False),
  *_linear(_LL + "mlp.up_proj", _OL + "mlp.up", False),
  *_linear(_LL + "mlp.down_proj", _OL + "mlp.down", False),
  *_norm(_LL + "input_layernorm", _OL + "input_norm"),
  *_norm(_LL + "post_attention_layernorm", _OL + "post_attn_norm"),
  ("lm_head.weight", "lm_head.kernel", "linear1"),
)
QWEN25VL_VISION_RULES = (
  ("model.visual.patch_embed.proj.weight", "visual.patch_embed.kernel",
   "conv"),
  *_norm(_VB + "norm1", _OB + "norm1"),
  *_norm(_VB + "norm2", _OB + "norm2"),
  *_linear(_VB + "attn.qkv", _OB + "attn.qkv"),
  *_linear(_VB + "attn.proj", _OB + "attn.proj", tf="linear2"),
  *_linear(_VB + "mlp.gate_proj", _OB + "mlp.gate"),
  *_linear(_VB + "mlp.up_proj", _OB + "mlp.up"),
  *_linear(_VB + "mlp.down_proj", _OB + "mlp.down"),
  *_norm("model.visual.merger.ln_q", "visual.merger.ln_q"),
  *_linear("model.visual.merger.mlp.0", "visual.merger.fc1"),
  *_linear("model.visual.merger.mlp.2", "visual.merger.fc2"),
)  # fmt: skip


def _qwen3_merger(hf: str, ours: str):
  return (
    *_norm(hf + ".norm", ours + ".norm", bias=True),
    *_linear(hf + ".linear_fc1", ours + ".fc1"),
    *_linear(hf + ".linear_fc2", ours + ".fc2"),
  )


QWEN3VL_VISION_RULES = (
  ("model.visual.patch_embed.proj.weight", "visual.patch_embed.kernel",
   "conv"),
  ("model.visual.patch_embed.proj.bias", "visual.patch_embed.bias", "vector"),
  ("model.visual.pos_embed.weight", "visual.pos_embed", "copy"),
  *_norm(_VB + "norm1", _OB + "norm1", bias=True),
  *_norm(_VB + "norm2", _OB + "norm2", bias=True),
  *_linear(_VB + "attn.qkv", _OB + "attn.qkv"),
  *_linear(_VB + "attn.proj", _OB + "attn.proj", tf="linear2"),
  *_linear(_VB + "mlp.linear_fc1", _OB + "mlp.fc1"),
  *_linear(_VB + "mlp.linear_fc2", _OB + "mlp.fc2"),
  *_qwen3_merger("model.visual.merger", "visual.merger"),
  *_qwen3_merger("model.visual.deepstack_merger_list.{i}",
                 "visual.deepstack_mergers.{i}"),
)  # fmt: skip

_IV = "model.vision_tower."
_IB = _IV + "encoder.layer.{i}."
_IO = "visual.blocks.{i}."
_IP = "model.multi_modal_projector."
INTERNVL_VISION_RULES = (
  (_IV + "embeddings.cls_token", "visual.cls_token", "batch1"),
  (_IV + "embeddings.position_embeddings", "visual.pos_embed", "batch1"),
  *_linear(_IV + "embeddings.patch_embeddings.projection",
           "visual.patch_embed", tf="conv"),
  (_IB + "lambda_1", _IO + "lambda1", "vector"),
  (_IB + "lambda_2", _IO + "lambda2", "vector"),
  *_linear(_IB + "attention.q_proj", _IO + "attn.q"),
  *_linear(_IB + "attention.k_proj", _IO + "attn.k"),
  *_linear(_IB + "attention.v_proj", _IO + "attn.v"),
  *_linear(_IB + "attention.projection_layer", _IO + "attn.proj",
           tf="linear2"),
  *_norm(_IB + "attention.q_norm", _IO + "attn.q_norm"),
  *_norm(_IB + "attention.k_norm", _IO + "attn.k_norm"),
  *_linear(_IB + "mlp.fc1", _IO + "mlp.fc1"),
  *_linear(_IB + "mlp.fc2", _IO + "mlp.fc2"),
  # RMSNorm (scale) or LayerNorm (scale and bias), as norm_type says.
  *_norm(_IB + "layernorm_before", _IO + "norm1", bias=True),
  *_norm(_IB + "layernorm_after", _IO + "norm2", bias=True),
  *_norm(_IV + "layernorm", "visual.final_norm", bias=True),
  *_norm(_IP + "layer_norm", "visual.projector.norm", bias=True),
  *_linear(_IP + "linear_1", "visual.projector.fc1"),
  *_linear(_IP + "linear_2", "visual.projector.fc2"),
)  # fmt: skip

# Per family: HF tensor name pattern -> our parameter path -> transform.
RULES: dict[str, tuple[tuple[str, str, str], ...]] = {
  "qwen2_5_vl": QWEN25VL_VISION_RULES + LANGUAGE_RULES,
  "qwen3_vl": QWEN3VL_VISION_RULES + LANGUAGE_RULES,
  "internvl": INTERNVL_VISION_RULES + LANGUAGE_RULES,
}

LEGACY_RENAMES = (
  (r"^visual\.", "model.visual."),
  (r"^language_model\.lm_head\.", "lm_head."),
  (r"^language_model\.(model\.)?", "model.language_model."),
  (r"^(vision_tower|multi_modal_projector)\.", r"model.\1."),
  (
    r"^model\.(?!visual\.|language_model\.|vision_tower\.|"
    r"multi_modal_projector\.)",
    "model.language_model.",
  ),
)


def _pattern(template: str) -> re.Pattern:
  return re.compile(
    "^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$"
  )


_FORWARD = {
  family: [(_pattern(h), ours, tf) for h, ours, tf in rules]
  for family, rules in RULES.items()
}
_BACKWARD = {
  family: [(_pattern(ours), h, tf) for h, ours, tf in rules]
  for family, rules in RULES.items()
}


def _path_str(path) -> str:
  return ".".join(str(p) for p in path)


def _path_tuple(text: str) -> tuple:
  return tuple(int(p) if p.isdigit() else p for p in text.split("."))


def hf_to_ours_name(
  name: str, family: str = "qwen2_5_vl"
) -> tuple[str, str] | None:
  """HF tensor name -> (our dotted path, transform), or None."""
  for old, new in LEGACY_RENAMES:
    name = re.sub(old, new, name)
  for pat, ours, tf in _FORWARD[family]:
    m = pat.match(name)
    if m:
      return ours.replace("{i}", m.groupdict().get("i") or ""), tf
  return None


def _to_ours(x: np.ndarray, tf: str, shape: tuple[int, ...]) -> np.ndarray:
  if tf in ("linear1", "linear2"):
    if x.ndim != 2:
      raise ValueError(f"expected a 2-D Linear weight, got {x.shape}")
    return x.T.reshape(shape)
  if tf == "conv":
    return x.reshape(x.shape[0], -1).T.reshape(shape)
  return x.reshape(shape)


def _to_hf(x: np.ndarray, tf: str, cfg: config_lib.ModelConfig) -> np.ndarray:
  if tf in ("linear1", "linear2"):
    n_in = int(tf[-1])
    rows = int(np.prod(x.shape[:n_in]))
    return np.ascontiguousarray(x.reshape(rows, -1).T)
  if tf == "conv":
    v = cfg.vision
    frames = () if cfg.family == "internvl" else (v.temporal_patch_size,)
    return np.ascontiguousarray(
      x.T.reshape(
        v.hidden_size, v.in_channels, *frames, v.patch_size, v.patch_size
      )
    )
  if tf == "batch1":
    return x.reshape(1, -1, x.shape[-1])
  if tf == "vector":
    return x.reshape(-1)
  return x


# ------------------------------------------------------------ safetensors


class CheckpointFileError(errors.InputError):
  """A checkpoint file that cannot be read; the message names the file."""


def _unreadable(path: str, why: Any) -> CheckpointFileError:
  return CheckpointFileError(
    f"{path}: not a readable safetensors file ({why}); it is probably "
    "truncated or not a checkpoint: copy or download it again, or point "
    "at a complete HF model directory"
  )


def _open(path: str):
  """`safe_open` (numpy framework) whose header errors name the file."""
  try:
    return safetensors.safe_open(path, framework="numpy")
  except safetensors.SafetensorError as e:
    raise _unreadable(path, e) from None


def _read_tensor(f, path: str, name: str) -> np.ndarray:
  """One tensor of an open file; BF16 comes back as ml_dtypes.bfloat16."""
  try:
    return f.get_tensor(name)
  except (safetensors.SafetensorError, TypeError, AttributeError) as e:
    # numpy has no name for some dtypes (e.g. F8_E4M3): safetensors fails
    # with a TypeError or AttributeError rather than its own error.
    dtype = f.get_slice(name).get_dtype()
    raise CheckpointFileError(
      f"{path}: tensor {name} ({dtype}) cannot be read ({e}); store the "
      "checkpoint in F32, BF16 or F16"
    ) from None


def _write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
  # save_file reads each array's buffer as is, so it must be contiguous.
  safetensors.numpy.save_file(
    {n: np.ascontiguousarray(x) for n, x in tensors.items()},
    path,
    metadata={"format": "pt"},  # as transformers writes (torch layout)
  )


def _weight_map(index: str) -> dict[str, str]:
  try:
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
  except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
    raise CheckpointFileError(
      f"{index}: not a readable safetensors index (expected JSON with a "
      f'"weight_map" of tensor name -> shard file; {type(e).__name__}: {e})'
      "; copy or download it again"
    ) from None
  return weight_map


def _weight_files(directory: str) -> list[str]:
  index = os.path.join(directory, "model.safetensors.index.json")
  single = os.path.join(directory, "model.safetensors")
  if os.path.exists(index):
    files = sorted(set(_weight_map(index).values()))
    missing = [
      p for p in files if not os.path.exists(os.path.join(directory, p))
    ]
    if missing:
      raise errors.MissingInputError(
        f"{index} lists shards that do not exist: {missing}"
      )
    return [os.path.join(directory, p) for p in files]
  if os.path.exists(single):
    return [single]
  raise errors.MissingInputError(
    f"{directory}: neither model.safetensors nor "
    "model.safetensors.index.json found"
  )


# ------------------------------------------------------------- load / save


def read_hf_config(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise errors.MissingInputError(
      f"{path} not found: not a HF model directory"
    )
  with open(path) as f:
    return json.load(f)


def _sharding_for(shardings, path: tuple, shape):
  if shardings is None:
    return None
  if isinstance(shardings, jax.sharding.Sharding):
    return shardings
  if callable(shardings):
    return shardings(path, shape)
  if isinstance(shardings, nnx.State):
    shardings = {
      p: v.get_value() if isinstance(v, nnx.Variable) else v
      for p, v in nnx.to_flat_state(shardings)
    }
  return shardings[path]


def load_hf(
  directory: str,
  config: config_lib.ModelConfig | None = None,
  shardings: Any = None,
) -> tuple[config_lib.ModelConfig, nnx.State]:
  """Reads a transformers Qwen2.5-VL / Qwen3-VL / InternVL directory ->
  (config, params).

  params is the `nnx.State` of `vlm.abstract(config)` (merge it with
  that graphdef, or use `load_model`). `shardings`: None (default device),
  one Sharding for all, a callable (path_tuple, shape) -> Sharding, or a
  mapping / nnx.State of shardings by parameter path. Each tensor is read
  from a memory map, converted and placed with `jax.device_put` on its own.
  """
  if "://" in str(directory):
    raise errors.InputError(
      f"{directory}: HF checkpoints are read from local disk (memory-mapped "
      "safetensors); copy the directory to each host first, e.g. "
      "`gcloud storage cp -r gs://.../Qwen2.5-VL-7B-Instruct /tmp/` on every "
      "worker, and pass the local path"
    )
  hf_cfg = read_hf_config(directory)
  parsed = config_lib.ModelConfig.from_hf_config(hf_cfg)
  cfg = config or parsed
  _, abstract_state = vlm.abstract(cfg)
  targets = {_path_str(p): v for p, v in nnx.to_flat_state(abstract_state)}
  dtype = np.dtype(cfg.param_dtype)
  loaded: dict[str, Any] = {}
  unexpected = []
  stored_head = None  # (file, name) of a tied checkpoint's stored lm_head
  embed_host = None  # the token embedding as read, to compare with it
  for path in _weight_files(directory):
    with _open(path) as f:
      for name in f.keys():
        hit = hf_to_ours_name(name, cfg.family)
        if hit is None or hit[0] not in targets:
          if hit and hit[0] == "lm_head.kernel" and cfg.tie_word_embeddings:
            stored_head = (path, name)  # a copy of the embedding, checked
            continue
          unexpected.append(f"{name} (in {path})")
          continue
        ours, tf = hit
        if ours in loaded:
          raise CheckpointFileError(f"{path}: tensor {name} appears twice")
        want = tuple(targets[ours].shape)
        shape = tuple(f.get_slice(name).get_shape())
        if math.prod(shape) != math.prod(want):
          raise CheckpointFileError(
            f"{path}: tensor {name} has shape {shape}, which does "
            f"not fit parameter {ours} of shape {want} for this config"
          )
        x = _to_ours(_read_tensor(f, path, name), tf, want).astype(dtype)
        if ours == "language.embed" and cfg.tie_word_embeddings:
          embed_host = x
        sharding = _sharding_for(shardings, _path_tuple(ours), want)
        loaded[ours] = jax.device_put(x, sharding)
  if unexpected:
    raise errors.InputError(
      f"{directory}: unexpected tensors with no stepjax parameter: "
      + ", ".join(unexpected[:20])
      + (f" ... ({len(unexpected)} total)" if len(unexpected) > 20 else "")
    )
  missing = sorted(set(targets) - set(loaded))
  if missing:
    raise errors.InputError(
      f"{directory}: checkpoint lacks tensors for parameters: "
      + ", ".join(missing[:20])
      + (f" ... ({len(missing)} total)" if len(missing) > 20 else "")
    )
  if stored_head is not None:
    _check_tied_head(stored_head, embed_host, dtype, directory)
  for path, var in nnx.to_flat_state(abstract_state):
    var.set_value(loaded[_path_str(path)])
  return cfg, abstract_state


def _check_tied_head(stored_head, embed_host, dtype, directory: str) -> None:
  """A tied checkpoint may store its lm_head only as a copy of the token
  embedding; a different one would be dropped, so it is refused."""
  path, name = stored_head
  with _open(path) as f:
    head = _read_tensor(f, path, name).astype(dtype)
  if embed_host is None or not np.array_equal(head, embed_host):
    raise errors.InputError(
      f"{path}: {name} differs from the token embedding, but "
      f"{directory}/config.json ties them (tie_word_embeddings); set "
      "tie_word_embeddings to false there (top level and text_config) to "
      "load the separate head"
    )


def load_model(directory: str, config=None, shardings=None):
  """`load_hf` merged into a `vlm.VisionLanguageModel` module."""
  cfg, params = load_hf(directory, config, shardings)
  graphdef, _ = vlm.abstract(cfg)
  return nnx.merge(graphdef, params)


def save_hf(params, config: config_lib.ModelConfig, directory: str) -> None:
  """Writes config.json + model.safetensors (transformers v5 layout).

  params: an nnx.State of the policy (or the module itself).
  """
  if isinstance(params, nnx.Module):
    params = nnx.state(params, nnx.Param)
  hf_cfg = config.to_hf_dict()  # before any file: it refuses some models
  os.makedirs(directory, exist_ok=True)
  tensors: dict[str, np.ndarray] = {}
  for path, var in nnx.to_flat_state(params):
    name = _path_str(path)
    for pat, hf, tf in _BACKWARD[config.family]:
      m = pat.match(name)
      if m:
        hf_name = hf.replace("{i}", m.groupdict().get("i") or "")
        x = np.asarray(jax.device_get(var.get_value()))
        tensors[hf_name] = _to_hf(x, tf, config)
        break
    else:
      raise ValueError(
        f"parameter {name} has no HF name in "
        f"hf_convert.RULES[{config.family!r}]"
      )
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_cfg, f, indent=2)
  _write_safetensors(os.path.join(directory, "model.safetensors"), tensors)
