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
v5 layout. Safetensors are read tensor by tensor through a memory map, so a
7B checkpoint is never fully resident on the host.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx

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

_ST_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


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


def _read_header(path: str) -> tuple[dict, int]:
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path}: not a safetensors file (too short)")
    n = int.from_bytes(raw, "little")
    header = json.loads(f.read(n))
  header.pop("__metadata__", None)
  return header, 8 + n


def _read_tensor(path: str, info: dict, base: int, name: str) -> np.ndarray:
  if info["dtype"] not in _ST_DTYPES:
    raise ValueError(f"{path}: tensor {name} has unsupported {info['dtype']}")
  start, end = info["data_offsets"]
  raw = np.memmap(
    path, np.uint8, "r", offset=base + start, shape=(end - start,)
  )
  return raw.view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])


def _write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for name, x in tensors.items():
    n = x.nbytes
    header[name] = {
      "dtype": _ST_NAMES[x.dtype],
      "shape": list(x.shape),
      "data_offsets": [offset, offset + n],
    }
    offset += n
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with open(path, "wb") as f:
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    for x in tensors.values():
      f.write(np.ascontiguousarray(x).tobytes())


def _weight_files(directory: str) -> list[str]:
  index = os.path.join(directory, "model.safetensors.index.json")
  single = os.path.join(directory, "model.safetensors")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = sorted(set(weight_map.values()))
    missing = [
      p for p in files if not os.path.exists(os.path.join(directory, p))
    ]
    if missing:
      raise FileNotFoundError(
        f"{index} lists shards that do not exist: {missing}"
      )
    return [os.path.join(directory, p) for p in files]
  if os.path.exists(single):
    return [single]
  raise FileNotFoundError(
    f"{directory}: neither model.safetensors nor "
    "model.safetensors.index.json found"
  )


# ------------------------------------------------------------- load / save


def read_hf_config(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: not a HF model directory")
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
    raise ValueError(
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
    header, base = _read_header(path)
    for name, info in header.items():
      hit = hf_to_ours_name(name)
      if hit is None or hit[0] not in targets:
        if hit and hit[0] == "lm_head.kernel" and cfg.tie_word_embeddings:
          continue  # tied checkpoints may still store a copy of the head
        unexpected.append(f"{name} (in {path})")
        continue
      ours, tf = hit
      want = tuple(targets[ours].shape)
      x = _read_tensor(path, info, base, name)
      if int(np.prod(x.shape)) != int(np.prod(want)):
        raise ValueError(
          f"{path}: tensor {name} has shape {tuple(x.shape)}, which does "
          f"not fit parameter {ours} of shape {want} for this config"
        )
      x = _to_ours(np.asarray(x), tf, want).astype(dtype)
      if ours in loaded:
        raise ValueError(f"{path}: tensor {name} appears twice")
      sharding = _sharding_for(shardings, _path_tuple(ours), want)
      loaded[ours] = jax.device_put(x, sharding)
  if unexpected:
    raise ValueError(
      f"{directory}: unexpected tensors with no stepjax parameter: "
      + ", ".join(unexpected[:20])
      + (f" ... ({len(unexpected)} total)" if len(unexpected) > 20 else "")
    )
  missing = sorted(set(targets) - set(loaded))
  if missing:
    raise ValueError(
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
  hf_cfg = config.to_hf_dict()
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_cfg, f, indent=2)
  _write_safetensors(os.path.join(directory, "model.safetensors"), tensors)
