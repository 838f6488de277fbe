r"""`stepjax plan`: per-device memory of a training job, from shapes alone.

  stepjax plan --config=configs/qwen25vl_7b_mrpo.py:mesh=v5e16,process=judge
  stepjax plan --config=... --chip=v5p

Nothing is allocated and no weights are read: the train state is built with
`jax.eval_shape` exactly as `train.loop.Trainer` builds it (policy and
step-value params, the RL phase's optimizer state, step, rng), placed with
the trainer's own `train.sharding.state_shardings` on an abstract mesh of
the configured size (`jax.sharding.AbstractMesh`, so a 16-chip plan runs on
one CPU), and each array's per-device bytes are its `shard_shape` times its
item size. Those rows are exact; the transient rows are estimates:

  reference policy   a copy of the params (rl.beta > 0), same shardings.
  gradients          one params-sized tree in param_dtype, same shardings.
  KV cache           2 (k, v) x layers x rows x S x kv_heads x head_dim x
                     bytes(dtype), rows = data.batch_size x G, S = max
                     token bucket + max_new_tokens - 1. Prompts are split
                     over data x fsdp (padded up to a multiple), so a
                     device holds ceil(P / shards) x G rows; kv heads
                     split over `tensor` when divisible.
  prefill logits     ceil(P / shards) x T x V x bytes(dtype) / tensor
                     (lm_head over the whole prompt before the last
                     position is taken).
  decoder acts.      with model.remat (per layer):
                       saved inputs  b x L x D x layers x bytes(dtype)
                       + one layer's working set, forward and backward:
                       2 x b x L x [(H + 2 KV) hd + D + 3 F / tensor] x
                       bytes + b x H/tensor x L^2 x (4 + bytes);
                     without remat: the working set times layers.
                     b = rows of a micro-batch per device = batch x G /
                     grad_accum / (data x fsdp), L = T + max_new_tokens.
  logits             b x L x V / tensor x 4 bytes x 2 (fp32 log-softmax
                     and its gradient).
  vision acts.       images are replicated in the update: I = batch x
                     data.max_images / grad_accum image slots per
                     device, N = min(max patch
                     bucket, max_pixels / 196) patches; a block keeps
                     N x (6 Dv + 3 Fv) x bytes, plus for window blocks
                     4 x W x Lw x Dv x bytes (q, k, v, out gathered into
                     W = vision_index.window_slots(N) slots of Lw rows)
                     + Hv x W x Lw^2 x (4 + bytes), for the full-attention
                     blocks Hv x N^2 x (4 + bytes). With model.remat (per
                     block): N x Dv x bytes x depth + the largest block;
                     without: the sum over blocks.
Peak = persistent (params, optimizer, value head, reference) + the larger
of sampling (KV cache + prefill logits) and update (gradients + decoder,
logits and vision activations). The verdict compares it with the chip's
HBM: "fits" below 90%, "tight" up to 100%, else "does not fit". With a
chip, the plan also names the largest data.batch_size (a multiple of the
batch shards, at the configured G, max_new_tokens and grad_accum) that
fits: the transient rows above are recomputed per batch size.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import numpy as np
from ml_collections import config_flags

from stepjax import chips
from stepjax.errors import InputError
from stepjax.models import config as config_lib
from stepjax.models import vision_index
from stepjax.train import components, optim, policy, sharding
from stepjax.train import state as state_lib

GiB = 1024**3
FITS = 0.9  # "fits" below this share of HBM, "tight" up to 1


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  total_bytes: float
  device_bytes: float
  kind: str  # "persistent" | "sampling" | "update" | "sum"
  note: str = ""


@dataclasses.dataclass
class Plan:
  rows: list[Row]
  mesh_shape: dict[str, int]
  num_devices: int
  chip: str
  hbm_gib: float | None
  peak_device_bytes: float
  param_count: int
  # The largest data.batch_size that fits (None without a chip).
  largest_batch: int | None = None
  group_size: int = 0
  max_new_tokens: int = 0

  def row(self, name: str) -> Row:
    for r in self.rows:
      if r.name == name:
        return r
    raise KeyError(name)

  @property
  def verdict(self) -> str:
    if self.hbm_gib is None:
      return "no verdict: pass --chip=v5e|v5p|v4|v6e"
    used = self.peak_device_bytes / (self.hbm_gib * GiB)
    word = "fits" if used < FITS else "tight" if used <= 1.0 else "does not fit"
    return (
      f"{word}: peak {self.peak_device_bytes / GiB:.2f} GiB per device = "
      f"{100 * used:.0f}% of {self.hbm_gib:g} GiB HBM ({self.chip})"
    )


def main(argv: list[str], config: Any, flag_values: Any) -> None:
  chip = flag_values.chip or chip_from_config_arg(
    config_flags.get_config_filename(flag_values["config"])
  )
  print(format_plan(plan(config, chip=chip)), flush=True)


def chip_from_config_arg(arg: str) -> str:
  """'v5e' from a config variant such as `...py:mesh=v5e16` ('' if none)."""
  m = re.search(r"mesh=(v\d+[a-z]?)", arg or "")
  return m.group(1) if m else ""


# ----------------------------------------------------------------- shapes


def mesh_shape(config: Any) -> dict[str, int]:
  """Axis sizes of `config.mesh`; a -1 axis takes this host's devices."""
  sizes = {a: int(config.mesh[a]) for a in sharding.MESH_AXES}
  if -1 in sizes.values():
    shape = sharding.resolve_mesh_shape(sizes, jax.device_count())
    sizes = dict(zip(sharding.MESH_AXES, shape))
  return sizes


def abstract_mesh(sizes: dict[str, int]) -> jax.sharding.AbstractMesh:
  return jax.sharding.AbstractMesh(
    tuple(sizes[a] for a in sharding.MESH_AXES), sharding.MESH_AXES
  )


def model_config(config: Any) -> config_lib.ModelConfig:
  """The trainer's ModelConfig (the tokenizer only fixes special ids)."""
  _, tok_info = components.load_tokenizer(config)
  return policy.model_config(config, tok_info)


def train_tx(config: Any):
  """The optimizer whose state is largest: the RL phase's (SFT's if none)."""
  if config.train.steps > 0:
    return optim.rl_optimizer(config)
  return optim.sft_optimizer(config)


def abstract_state(config: Any, cfg: config_lib.ModelConfig, tx) -> Any:
  """The TrainState the trainer builds, as ShapeDtypeStructs."""
  return jax.eval_shape(state_lib.init_fn(cfg, config.seed, tx))


def _nbytes(shape, dtype) -> int:
  return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def tree_bytes(tree: Any, shardings: Any) -> tuple[int, int]:
  """(total bytes, bytes on one device) of an abstract tree."""
  total = device = 0
  for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    total += _nbytes(x.shape, x.dtype)
    device += _nbytes(s.shard_shape(x.shape), x.dtype)
  return total, device


def _opt_parts(opt_state: Any, shardings: Any) -> dict[str, tuple[int, int]]:
  """Optimizer bytes by kind: Adam moments, accumulated gradients, other."""
  parts: dict[str, list[int]] = {}
  flat = jax.tree_util.tree_flatten_with_path(opt_state)[0]
  for (path, x), s in zip(flat, jax.tree.leaves(shardings)):
    keys = jax.tree_util.keystr(path)
    if ".mu" in keys or ".nu" in keys:
      kind = "adam moments (mu, nu)"
    elif "acc_grads" in keys:
      kind = "accumulated grads (MultiSteps)"
    else:
      kind = "counts and other"
    acc = parts.setdefault(kind, [0, 0])
    acc[0] += _nbytes(x.shape, x.dtype)
    acc[1] += _nbytes(s.shard_shape(x.shape), x.dtype)
  return {k: (v[0], v[1]) for k, v in parts.items()}


def _split(n: int, ways: int) -> float:
  """n split `ways` ways when divisible (as the trainer's shardings do)."""
  return n / ways if ways > 1 and n % ways == 0 else float(n)


# ------------------------------------------------------------------- plan


def transient_rows(
  config: Any,
  cfg: config_lib.ModelConfig,
  sizes: dict[str, int],
  batch_size: int,
) -> list[Row]:
  """Sampling and update rows for `batch_size` prompts per step."""
  rows: list[Row] = []

  def add(name, total, device, kind, note=""):
    rows.append(Row(name, float(total), float(device), kind, note))

  t, v = cfg.text, cfg.vision
  dsize = np.dtype(cfg.dtype).itemsize
  d = config.data
  batch = int(batch_size)
  g = int(config.sampling.group_size)
  r = int(config.sampling.max_new_tokens)
  prompt_len = max(int(b) for b in d.token_buckets)
  batch_axes = sizes["data"] * sizes["fsdp"]
  tensor = sizes["tensor"]

  # Sampling: KV cache and the prefill's logits, prompts split over the
  # batch axes (padded up to a multiple of them, as rollout.generate does).
  prompts_dev = -(-batch // batch_axes)
  rows_b = batch * g
  slots = prompt_len + max(r - 1, 0)
  kv_row = 2 * t.num_layers * slots * t.num_kv_heads * t.head_dim * dsize
  kv_dev = prompts_dev * g * kv_row / t.num_kv_heads
  kv_dev *= _split(t.num_kv_heads, tensor)
  add(
    "KV cache (sampling)", rows_b * kv_row, kv_dev, "sampling",
    f"{rows_b} rows x {slots} slots, {prompts_dev * g} rows per device, "
    f"{cfg.dtype}",
  )  # fmt: skip
  pre_row = prompt_len * t.vocab_size * dsize
  pre_dev = prompts_dev * pre_row / t.vocab_size
  pre_dev *= _split(t.vocab_size, tensor)
  add("prefill logits (sampling)", batch * pre_row, pre_dev, "sampling")

  # Update: activations of one micro-batch (the gradients are in plan()).
  micro = batch * g / max(int(config.optim.grad_accum), 1)
  b = max(micro / batch_axes, 1.0)
  seq = prompt_len + r
  heads_dev = _split(t.num_heads, tensor)
  kv_dev_heads = _split(t.num_kv_heads, tensor)
  f_dev = _split(t.intermediate_size, tensor)
  layer = 2 * b * seq * (
    (heads_dev + 2 * kv_dev_heads) * t.head_dim + t.hidden_size + 3 * f_dev
  ) * dsize + b * heads_dev * seq * seq * (4 + dsize)
  if cfg.remat:
    act_dev = b * seq * t.hidden_size * t.num_layers * dsize + layer
    note = f"remat per layer, {b:g} rows x {seq} tokens per device"
  else:
    act_dev = layer * t.num_layers
    note = f"no remat, {b:g} rows x {seq} tokens per device"
  add("decoder activations", act_dev * batch_axes, act_dev, "update", note)
  v_dev_logits = b * seq * _split(t.vocab_size, tensor) * 4 * 2
  add("logits (update)", v_dev_logits * batch_axes, v_dev_logits, "update")
  slots_per_prompt = int(d.get("max_images", 1))
  images = max(
    batch * slots_per_prompt / max(int(config.optim.grad_accum), 1), 1.0
  )
  patches = min(
    max(int(x) for x in d.patch_buckets),
    int(d.max_pixels) // (v.patch_size * v.patch_size),
  )
  linear = patches * (6 * v.hidden_size + 3 * v.intermediate_size) * dsize
  rows_w = vision_index.window_rows(v)
  slots = vision_index.window_slots(patches, v)
  window_block = linear + 4 * slots * rows_w * v.hidden_size * dsize
  window_block += v.num_heads * slots * rows_w * rows_w * (4 + dsize)
  if v.image_size:  # InternViT: attention inside each tile and its CLS
    tile_rows = v.tile_side**2
    side_rows = tile_rows + 1
    scores = -(-patches // tile_rows) * side_rows * side_rows
  else:
    scores = patches * patches
  full_block = linear + v.num_heads * scores * (4 + dsize)
  num_full = v.num_full_attention_blocks
  if cfg.remat:
    vis_dev = patches * v.hidden_size * dsize * v.depth
    vis_dev += max(full_block, window_block if v.depth > num_full else 0)
    how = "remat per block"
  else:
    vis_dev = (v.depth - num_full) * window_block + num_full * full_block
    how = "no remat"
  vis_dev *= images
  if v.window_size:
    attention = f"{slots} windows x {rows_w} rows"
  elif v.image_size:
    attention = f"attention inside each {v.image_size}-pixel tile"
  else:
    attention = "full attention in every block"
  add(
    "vision activations", vis_dev, vis_dev, "update",
    f"{images:g} image(s) x {patches} patches, {attention}, {how}, "
    "replicated",
  )  # fmt: skip

  return rows


def largest_batch(
  config: Any,
  cfg: config_lib.ModelConfig,
  sizes: dict[str, int],
  persistent: float,
  gradients: float,
  budget: float,
) -> int:
  """The largest data.batch_size (a multiple of the batch shards, at the
  configured G, max_new_tokens and grad_accum) whose peak per device,
  persistent + max(sampling, gradients + update activations), stays
  within `budget` bytes; 0 if not even one multiple does."""
  shards = sizes["data"] * sizes["fsdp"]

  def peak(k: int) -> float:
    rows = transient_rows(config, cfg, sizes, k * shards)
    sampling = sum(r.device_bytes for r in rows if r.kind == "sampling")
    update = gradients + sum(r.device_bytes for r in rows if r.kind == "update")
    return persistent + max(sampling, update)

  if peak(1) > budget:
    return 0
  lo, hi = 1, 2
  while peak(hi) <= budget and hi < 1 << 20:
    lo, hi = hi, hi * 2
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if peak(mid) <= budget else (lo, mid)
  return lo * shards


def plan(config: Any, chip: str = "") -> Plan:
  """The memory plan of `config` (see the module docstring)."""
  problem = chips.chip_problem(chip)
  if problem:
    raise InputError(problem)
  sizes = mesh_shape(config)
  mesh = abstract_mesh(sizes)
  cfg = model_config(config)
  tx = train_tx(config)
  state = abstract_state(config, cfg, tx)
  shardings = sharding.state_shardings(state, mesh, config.logical_axis_rules)
  rows: list[Row] = []

  def add(name, total, device, kind, note=""):
    rows.append(Row(name, float(total), float(device), kind, note))

  p_tot, p_dev = tree_bytes(state.params, shardings.params)
  add("params", p_tot, p_dev, "persistent", f"param_dtype {cfg.param_dtype}")
  o_tot, o_dev = tree_bytes(state.opt_state, shardings.opt_state)
  add("optimizer state", o_tot, o_dev, "persistent", "AdamW (+ MultiSteps)")
  for kind, (t, d) in _opt_parts(state.opt_state, shardings.opt_state).items():
    add(f"  {kind}", t, d, "detail")
  v_tot, v_dev = tree_bytes(state.value_params, shardings.value_params)
  add("step-value head", v_tot, v_dev, "persistent")
  s_tot, s_dev = tree_bytes(
    (state.step, state.rng), (shardings.step, shardings.rng)
  )
  add("step, rng", s_tot, s_dev, "persistent")
  if config.rl.beta > 0 and config.train.steps > 0:
    add("reference policy", p_tot, p_dev, "persistent", "rl.beta > 0")

  add("gradients (update)", p_tot + v_tot, p_dev + v_dev, "update")
  rows += transient_rows(config, cfg, sizes, int(config.data.batch_size))
  persistent = sum(x.device_bytes for x in rows if x.kind == "persistent")
  hbm = chips.HBM_GIB.get(chip)
  largest = None
  if hbm is not None:
    largest = largest_batch(
      config, cfg, sizes, persistent, p_dev + v_dev, FITS * hbm * GiB
    )
  persistent_total = sum(x.total_bytes for x in rows if x.kind == "persistent")
  sampling_b = sum(x.device_bytes for x in rows if x.kind == "sampling")
  update_b = sum(x.device_bytes for x in rows if x.kind == "update")
  peak = persistent + max(sampling_b, update_b)
  n = math.prod(sizes.values())
  add("persistent", persistent_total, persistent, "sum")
  add("peak sampling", (persistent + sampling_b) * n, persistent + sampling_b,
      "sum")  # fmt: skip
  add("peak update", (persistent + update_b) * n, persistent + update_b, "sum")
  return Plan(
    rows=rows,
    mesh_shape=sizes,
    num_devices=n,
    chip=chip,
    hbm_gib=chips.HBM_GIB.get(chip),
    peak_device_bytes=peak,
    param_count=sum(int(x.size) for x in jax.tree.leaves(state.params)),
    largest_batch=largest,
    group_size=int(config.sampling.group_size),
    max_new_tokens=int(config.sampling.max_new_tokens),
  )


def format_plan(p: Plan) -> str:
  """The plan as a text table, then the verdict."""
  mesh = " x ".join(f"{k}={v}" for k, v in p.mesh_shape.items())
  head = (
    f"memory plan: {p.param_count / 1e9:.2f}B policy params, mesh {mesh} "
    f"({p.num_devices} devices{', ' + p.chip if p.chip else ''})"
  )
  header = ("component", "total GiB", "per-device GiB", "note")
  lines = []
  for r in p.rows:
    if r.name == "persistent":
      lines.append(("-" * 30, "", "", ""))
    total = (
      ""
      if r.kind == "sum" and r.name != "persistent"
      else (f"{r.total_bytes / GiB:.2f}")
    )
    lines.append((r.name, total, f"{r.device_bytes / GiB:.3f}", r.note))
  widths = [max(len(x[i]) for x in [header] + lines) for i in range(3)]
  fmt = lambda x: (
    f"{x[0]:<{widths[0]}}  {x[1]:>{widths[1]}}  {x[2]:>{widths[2]}}  {x[3]}"
  ).rstrip()
  body = "\n".join(fmt(x) for x in [header] + lines)
  return f"{head}\n{body}\n{p.verdict}{_largest_line(p)}"


def _largest_line(p: Plan) -> str:
  if p.largest_batch is None:
    return ""
  at = (
    f"at sampling.group_size={p.group_size}, "
    f"sampling.max_new_tokens={p.max_new_tokens}"
  )
  if p.largest_batch == 0:
    return (
      f"\nno data.batch_size fits under {100 * FITS:.0f}% of HBM {at}: "
      "raise optim.grad_accum, shard the model further (mesh.fsdp / "
      "mesh.tensor) or lower them"
    )
  rows = p.largest_batch * p.group_size
  return (
    f"\nlargest data.batch_size that fits under {100 * FITS:.0f}% of HBM "
    f"{at}: {p.largest_batch} prompts ({rows} sampled rows, "
    f"{rows * p.max_new_tokens} new tokens per step)"
  )
