"""transformers Qwen2.5-VL checkpoints <-> stepjax parameters.

`RULES` is the whole mapping: HF tensor name pattern -> our parameter path
-> transform. `{i}` stands for a layer/block number. Transforms:
  linear1 / linear2: HF Linear weight [out, in] -> our kernel
    [in..., out...] (transpose, then reshape; `2` = two input axes, as in
    o_proj [heads, head_dim, embed]);
  vector: reshape (biases [out...], norm scales);
  conv: Conv3d weight [D, C, Tp, p, p] -> kernel [C*Tp*p*p, D];
  copy: same layout (token embedding).
Older checkpoints (`visual.*`, `model.layers.*`, as on the Hub) are renamed
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
from stepjax.models import qwen25vl

_VB = "model.visual.blocks.{i}."
_LL = "model.language_model.layers.{i}."
RULES: tuple[tuple[str, str, str], ...] = (
  ("model.visual.patch_embed.proj.weight", "visual.patch_embed.kernel", "conv"),
  (_VB + "norm1.weight", "visual.blocks.{i}.norm1.scale", "vector"),
  (_VB + "norm2.weight", "visual.blocks.{i}.norm2.scale", "vector"),
  (_VB + "attn.qkv.weight", "visual.blocks.{i}.attn.qkv.kernel", "linear1"),
  (_VB + "attn.qkv.bias", "visual.blocks.{i}.attn.qkv.bias", "vector"),
  (_VB + "attn.proj.weight", "visual.blocks.{i}.attn.proj.kernel", "linear2"),
  (_VB + "attn.proj.bias", "visual.blocks.{i}.attn.proj.bias", "vector"),
  (_VB + "mlp.gate_proj.weight", "visual.blocks.{i}.mlp.gate.kernel",
   "linear1"),
  (_VB + "mlp.gate_proj.bias", "visual.blocks.{i}.mlp.gate.bias", "vector"),
  (_VB + "mlp.up_proj.weight", "visual.blocks.{i}.mlp.up.kernel", "linear1"),
  (_VB + "mlp.up_proj.bias", "visual.blocks.{i}.mlp.up.bias", "vector"),
  (_VB + "mlp.down_proj.weight", "visual.blocks.{i}.mlp.down.kernel",
   "linear1"),
  (_VB + "mlp.down_proj.bias", "visual.blocks.{i}.mlp.down.bias", "vector"),
  ("model.visual.merger.ln_q.weight", "visual.merger.ln_q.scale", "vector"),
  ("model.visual.merger.mlp.0.weight", "visual.merger.fc1.kernel", "linear1"),
  ("model.visual.merger.mlp.0.bias", "visual.merger.fc1.bias", "vector"),
  ("model.visual.merger.mlp.2.weight", "visual.merger.fc2.kernel", "linear1"),
  ("model.visual.merger.mlp.2.bias", "visual.merger.fc2.bias", "vector"),
  ("model.language_model.embed_tokens.weight", "language.embed", "copy"),
  ("model.language_model.norm.weight", "language.final_norm.scale", "vector"),
  (_LL + "self_attn.q_proj.weight", "language.layers.{i}.attn.q.kernel",
   "linear1"),
  (_LL + "self_attn.q_proj.bias", "language.layers.{i}.attn.q.bias", "vector"),
  (_LL + "self_attn.k_proj.weight", "language.layers.{i}.attn.k.kernel",
   "linear1"),
  (_LL + "self_attn.k_proj.bias", "language.layers.{i}.attn.k.bias", "vector"),
  (_LL + "self_attn.v_proj.weight", "language.layers.{i}.attn.v.kernel",
   "linear1"),
  (_LL + "self_attn.v_proj.bias", "language.layers.{i}.attn.v.bias", "vector"),
  (_LL + "self_attn.o_proj.weight", "language.layers.{i}.attn.o.kernel",
   "linear2"),
  (_LL + "mlp.gate_proj.weight", "language.layers.{i}.mlp.gate.kernel",
   "linear1"),
  (_LL + "mlp.up_proj.weight", "language.layers.{i}.mlp.up.kernel", "linear1"),
  (_LL + "mlp.down_proj.weight", "language.layers.{i}.mlp.down.kernel",
   "linear1"),
  (_LL + "input_layernorm.weight", "language.layers.{i}.input_norm.scale",
   "vector"),
  (_LL + "post_attention_layernorm.weight",
   "language.layers.{i}.post_attn_norm.scale", "vector"),
  ("lm_head.weight", "lm_head.kernel", "linear1"),
)  # fmt: skip

LEGACY_RENAMES = (
  (r"^visual\.", "model.visual."),
  (r"^model\.(?!visual\.|language_model\.)", "model.language_model."),
)


def _pattern(template: str) -> re.Pattern:
  return re.compile(
    "^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$"
  )


_FORWARD = [(_pattern(h), ours, tf) for h, ours, tf in RULES]
_BACKWARD = [(_pattern(ours), h, tf) for h, ours, tf in RULES]


def _path_str(path) -> str:
  return ".".join(str(p) for p in path)


def _path_tuple(text: str) -> tuple:
  return tuple(int(p) if p.isdigit() else p for p in text.split("."))


def hf_to_ours_name(name: str) -> tuple[str, str] | None:
  """HF tensor name -> (our dotted path, transform), or None."""
  for old, new in LEGACY_RENAMES:
    name = re.sub(old, new, name)
  for pat, ours, tf in _FORWARD:
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
    return np.ascontiguousarray(
      x.T.reshape(
        v.hidden_size,
        v.in_channels,
        v.temporal_patch_size,
        v.patch_size,
        v.patch_size,
      )
    )
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
  """Reads a transformers Qwen2.5-VL directory -> (config, params).

  params is the `nnx.State` of `qwen25vl.abstract(config)` (merge it with
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
  _, abstract_state = qwen25vl.abstract(cfg)
  targets = {_path_str(p): v for p, v in nnx.to_flat_state(abstract_state)}
  dtype = np.dtype(cfg.param_dtype)
  loaded: dict[str, Any] = {}
  unexpected = []
  for path in _weight_files(directory):
    with _open(path) as f:
      for name in f.keys():
        hit = hf_to_ours_name(name)
        if hit is None or hit[0] not in targets:
          if hit and hit[0] == "lm_head.kernel" and cfg.tie_word_embeddings:
            continue  # tied checkpoints may still store a copy of the head
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
  for path, var in nnx.to_flat_state(abstract_state):
    var.set_value(loaded[_path_str(path)])
  return cfg, abstract_state


def load_model(directory: str, config=None, shardings=None):
  """`load_hf` merged into a `qwen25vl.Qwen25VL` module."""
  cfg, params = load_hf(directory, config, shardings)
  graphdef, _ = qwen25vl.abstract(cfg)
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
    for pat, hf, tf in _BACKWARD:
      m = pat.match(name)
      if m:
        hf_name = hf.replace("{i}", m.groupdict().get("i") or "")
        x = np.asarray(jax.device_get(var.get_value()))
        tensors[hf_name] = _to_hf(x, tf, config)
        break
    else:
      raise ValueError(f"parameter {name} has no HF name in hf_convert.RULES")
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_cfg, f, indent=2)
  _write_safetensors(os.path.join(directory, "model.safetensors"), tensors)
