"""RL update throughput: stepjax `steps.train_step` vs transformers/PyTorch.

One update = forward + backward + AdamW step of the policy on B = P x G
completions of L = T prompt + C completion tokens (default 4 x 8 rows of
66 + 128 = 194 tokens; one 112x112 image per prompt: 64 patch rows, 16
merged image tokens). Both sides start from the same `ModelConfig.bench()`
weights (ours written by `hf_convert.save_hf`, loaded by transformers'
`Qwen2_5_VLForConditionalGeneration`) and compute, in float32 on this
host's CPU, the same loss: per-token PPO-clip with old logp =
stop_gradient(logp), per-token advantages, masked mean per completion then
mean over completions, beta = 0 (no reference model), no value head; then
global-norm clipping and AdamW with equal hyper-parameters.

Ours: `steps.train_step(kind="rl")` jitted once (AOT-compiled, the state
donated) with an empty value-head state, by default as the trainer runs
it (`rl.share_prompt`): each prompt once per group of G rows
(`steps.shared_prompt_forward`), the same loss and gradients as whole
rows; `--whole_rows` runs every row whole (`prompt_len` 0).
Transformers: the model in train mode with its default (sdpa) attention,
`torch.optim.AdamW` and `clip_grad_norm_`, torch threads = the CPU cores
we may run on. It gets
the P images repeated G times (one per row, as a transformers RL trainer
feeds them); ours encodes each image once and repeats its features.

tokens/s = B * L / (median seconds per update over `iters` updates after
one warm-up update; the two sides' updates alternate, so both see the same
load on a shared host). The first update of each side is the parity check:
equal losses and policy gradient norms (before clipping), and, as a check
on the forward itself, the log-probs of the completion tokens.

FLOP/s: the update's FLOPs from XLA's cost analysis of the compiled step
(and, as a cross-check, 6 * params * tokens) over our seconds per update,
against a measured peak: the median time of a jitted 2048^3 float32 matmul
(`bench_machine.matmul_peak`, the one `stepjax bench` reports).

Shapes: P prompts, G samples each, B = P * G rows, T prompt tokens, C
completion tokens, L = T + C, N patch rows per image, P_ = 1176 patch row.

Run `python -m stepjax.train.bench [ITERS] [--profile]` or
`stepjax bench train`; `--profile` adds a breakdown of our update, and
both sides' time per kind of op (`op_profile`: matmuls, layout copies,
reductions, gathers, elementwise).
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stepjax import (
  bench_args,
  bench_machine,
  image_slots,
  op_profile,
  sequences,
)
from stepjax.models import config as config_lib
from stepjax.models import hf_convert, vision_internvl, vlm
from stepjax.rl import losses
from stepjax.sampling import bench as sampling_bench
from stepjax.train import batches, optim, policy, steps
from stepjax.train import state as state_lib

_LR = 1e-4
_B1, _B2, _EPS = 0.9, 0.99, 1e-8
_WEIGHT_DECAY = 0.01
_GRAD_CLIP = 1.0
_CLIP_EPS = 0.2


def _median_time(fn, iters: int) -> float:
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def make_batch(
  cfg: config_lib.ModelConfig,
  prompts: int,
  group_size: int,
  prompt_text: int,
  completion: int,
  image_px: int,
  seed: int,
) -> tuple[batches.UpdateBatch, dict[str, np.ndarray]]:
  """(update, hf): a host RL update batch and transformers' flat inputs.

  Prompts are text, <vision_start>, image pads, <vision_end>, text;
  completions have random lengths in [C/2, C] (right padded) and random
  per-token advantages. `update` (numpy) holds the sequences and adv_BxL;
  `hf` transformers' pixel_values (all B rows' images) and grids (or
  InternVL's tiles and 1D positions).
  """
  prompt = sampling_bench.prompt_batch(
    cfg, prompts, image_px, prompt_text, seed
  )
  rng = np.random.default_rng(seed + 1)
  b = prompts * group_size
  lengths_B = rng.integers(completion // 2, completion + 1, b)
  comp_mask_BxC = (np.arange(completion)[None] < lengths_B[:, None]).astype(
    np.int32
  )
  comp_ids_BxC = rng.integers(0, cfg.bos_token_id, (b, completion))
  comp_ids_BxC = np.where(comp_mask_BxC > 0, comp_ids_BxC, cfg.pad_token_id)
  seq = sequences.build(
    prompt["prompt_ids_BxT"],
    prompt["prompt_mask_BxT"],
    comp_ids_BxC.astype(np.int32),
    comp_mask_BxC,
    image_slots.from_batch(prompt, prompts, cfg),
    cfg,
    group_size,
  )
  adv_BxL = rng.standard_normal(seq.ids_BxL.shape).astype(np.float32)
  update = batches.UpdateBatch(seq=seq, adv_BxL=adv_BxL * seq.loss_mask_BxL)
  flat_PxSxP = prompt["flat_pixels"].reshape(prompts, -1, cfg.vision.patch_dim)
  flat = np.repeat(flat_PxSxP, group_size, axis=0).reshape(
    -1, cfg.vision.patch_dim
  )
  if cfg.family == "internvl":  # tiles; 1D positions given explicitly
    hf = {
      "pixel_values": vision_internvl.tiles_from_rows(flat, cfg.vision),
      "position_ids": seq.positions_3xBxL[0].astype(np.int64),
    }
  else:
    hf = {
      "pixel_values": flat,
      "image_grid_thw": np.repeat(prompt["grid_thw_Ix3"], group_size, axis=0),
    }
  return update, hf


def random_params(cfg: config_lib.ModelConfig, seed: int) -> Any:
  """Policy params (numpy) drawn on the host: N(0, init range), norms 1.

  The same distribution as `policy.init` without its ~100 small eager
  computations (each an XLA compile, seconds on a busy host).
  """
  rng = np.random.default_rng(seed)
  _, abstract = vlm.abstract(cfg)

  def draw(path, leaf):
    if "scale" in jax.tree_util.keystr(path):
      return np.ones(leaf.shape, leaf.dtype)
    x = rng.standard_normal(leaf.shape, np.float32) * cfg.initializer_range
    return x.astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def _optim_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.warmup_steps = 0
  c.schedule = "constant"
  c.weight_decay = _WEIGHT_DECAY
  c.b1, c.b2 = _B1, _B2
  c.grad_clip = _GRAD_CLIP
  c.grad_accum = 1
  return c


def xla_flops(compiled) -> float:
  """FLOPs by XLA's cost analysis of a compiled (or lowered) computation."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list | tuple):  # older jax: one dict per module
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


class Ours:
  """Our jitted RL update on a fixed batch; `step()` runs one update."""

  def __init__(self, cfg, params, batch, group_size: int, prompt_len=0):
    self.graphs, _, _ = policy.abstract(cfg)
    self.opts = steps.StepOptions(
      group_size=group_size,
      prompt_len=prompt_len,
      eps_low=_CLIP_EPS,
      eps_high=_CLIP_EPS,
      beta=0.0,
      aggregation="seq_mean",
      value_loss_weight=0.0,
      train_value_head=False,
    )
    self.tx = optim.make_optimizer(_optim_config(), _LR, total_steps=1000)
    self.batch = jax.device_put(batch)
    # No value head: an empty value state, so the optimizer only sees
    # the policy.
    trainables = {"policy": params, "value": {}}
    self.state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      value_params={},
      opt_state=jax.jit(self.tx.init)(trainables),
      rng=jnp.zeros((2,), jnp.uint32),
    )
    fn = functools.partial(
      steps.train_step,
      graphs=self.graphs,
      tx=self.tx,
      opts=self.opts,
      kind="rl",
    )
    t0 = time.perf_counter()
    self.compiled = (
      jax.jit(fn, donate_argnums=(0,)).lower(self.state, self.batch).compile()
    )
    self.compile_s = time.perf_counter() - t0
    self.flops = xla_flops(self.compiled)

  def logp(self):
    """float32[B, L-1] log-probs under the current params (not donated)."""
    fn = jax.jit(
      lambda p, b: steps.sequence_logp(
        self.graphs, p, b.seq, self.opts.group_size
      )[0]
    )
    return np.asarray(fn(self.state.params, self.batch))

  def step(self) -> dict[str, float]:
    self.state, metrics = self.compiled(self.state, self.batch)
    return {k: float(v) for k, v in jax.block_until_ready(metrics).items()}


_HF_CLASSES = {
  "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
  "qwen3_vl": "Qwen3VLForConditionalGeneration",
  "internvl": "InternVLForConditionalGeneration",
}


class Theirs:
  """The same update in transformers / PyTorch."""

  def __init__(self, cfg, params, batch, hf):
    import torch  # the benchmark's baseline; not a dependency of training
    import transformers

    self.torch = torch
    with tempfile.TemporaryDirectory() as tmp:
      hf_convert.save_hf(params, cfg, tmp)
      model_cls = getattr(transformers, _HF_CLASSES[cfg.family])
      model = model_cls.from_pretrained(tmp, dtype=torch.float32)
    self.model = model.train()
    ids = torch.tensor(batch.seq.ids_BxL, dtype=torch.long)
    self.inputs = dict(
      input_ids=ids,
      attention_mask=torch.tensor(batch.seq.mask_BxL, dtype=torch.long),
      **{k: torch.tensor(v) for k, v in hf.items()},
    )
    if cfg.family != "internvl":
      self.inputs["mm_token_type_ids"] = (ids == cfg.image_pad_token_id).long()
    self.targets = ids[:, 1:]
    self.mask = torch.tensor(
      batch.seq.loss_mask_BxL[:, 1:], dtype=torch.float32
    )
    self.adv = torch.tensor(batch.adv_BxL[:, 1:])
    self.opt = torch.optim.AdamW(
      self.model.parameters(),
      lr=_LR,
      betas=(_B1, _B2),
      eps=_EPS,
      weight_decay=_WEIGHT_DECAY,
    )

  def _logp(self):
    logits = self.model(**self.inputs).logits[:, :-1]
    picked = logits.gather(-1, self.targets[..., None])[..., 0]
    return picked - self.torch.logsumexp(logits, dim=-1)

  def logp(self) -> np.ndarray:
    with self.torch.no_grad():
      return self._logp().numpy()

  def step(self) -> dict[str, float]:
    torch = self.torch
    self.opt.zero_grad(set_to_none=True)
    logp = self._logp()
    ratio = torch.exp(logp - logp.detach())
    clipped = torch.clamp(ratio, 1.0 - _CLIP_EPS, 1.0 + _CLIP_EPS)
    per_token = -torch.minimum(ratio * self.adv, clipped * self.adv)
    count = self.mask.sum(1).clamp(min=1.0)
    loss = ((per_token * self.mask).sum(1) / count).mean()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(
      self.model.parameters(), _GRAD_CLIP
    )
    self.opt.step()
    return {"loss": loss.item(), "grad_norm": grad_norm.item()}


def profile_ours(ours: Ours, iters: int) -> dict[str, float]:
  """Seconds of the parts of our update (each jitted alone, median).

  vision: the image encoder; forward: full logits; logp: forward +
  log_softmax; grad: value_and_grad of the RL loss; the optimizer share is
  the full step minus grad.
  """
  g, opts, b = ours.graphs, ours.opts, ours.batch
  params = ours.state.params
  trainables = {"policy": params, "value": {}}

  def timed(fn, *args):
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(*args))
    return _median_time(lambda: jax.block_until_ready(jitted(*args)), iters)

  out = {
    "vision_s": timed(
      lambda p, x: vlm.encode_images(
        g.policy, p, x.images.pixels_IxNxP, x.images.vision_meta
      ),
      params,
      b.seq,
    ),
    "forward_s": timed(
      lambda p, x: steps.forward(g, p, x, opts.group_size)[0], params, b.seq
    ),
    "logp_s": timed(
      lambda p, x: steps.sequence_logp(g, p, x, opts.group_size)[0],
      params,
      b.seq,
    ),
    "grad_s": timed(
      jax.grad(lambda t, x: steps.rl_loss(t, x, g, opts)[0]), trainables, b
    ),
  }
  logits = jnp.zeros(b.seq.ids_BxL.shape + (g.cfg.text.vocab_size,))
  out["log_softmax_fwd_bwd_s"] = timed(
    jax.grad(lambda z, ids: jnp.sum(losses.token_logp(z[:, :-1], ids[:, 1:]))),
    logits,
    b.seq.ids_BxL,
  )
  grads = jax.tree.map(jnp.ones_like, trainables)
  opt_state = ours.tx.init(trainables)

  def opt_step(gr, s, t):
    updates, s = ours.tx.update(gr, s, t)
    return optax.apply_updates(t, updates), s

  out["optimizer_s"] = timed(opt_step, grads, opt_state, trainables)
  return out


def bench_train(
  preset: str = "bench",
  prompts: int = 4,
  group_size: int = 8,
  prompt_text: int = 48,
  completion: int = 128,
  image_px: int = 112,
  iters: int = 5,
  seed: int = 0,
  hf: bool = True,
  torch_threads: int | None = None,
  peak: bool = True,
  profile: bool = False,
  share_prompt: bool = True,
) -> dict[str, Any]:
  """Times both updates; returns seconds, tokens/s, ratio, parity, FLOPs.
  share_prompt: ours runs each group's prompt once (as the trainer does)."""
  # The attention the trainer picks on one CPU (`model.attention=auto`).
  cfg = getattr(config_lib.ModelConfig, preset)().replace(attention="rows")
  params = random_params(cfg, seed)
  batch, hf_inputs = make_batch(
    cfg, prompts, group_size, prompt_text, completion, image_px, seed
  )
  b, length = batch.seq.ids_BxL.shape
  tokens = b * length
  n_params = vlm.param_count(cfg)
  result: dict[str, Any] = {
    "tokens": float(tokens),
    "rows": float(b),
    "seq_len": float(length),
    "params": float(n_params),
    "share_prompt": float(share_prompt),
  }

  theirs = None
  if hf:
    theirs = Theirs(cfg, params, batch, hf_inputs)
  prompt_len = length - completion if share_prompt and group_size > 1 else 0
  ours = Ours(cfg, jax.device_put(params), batch, group_size, prompt_len)
  mask = batch.seq.loss_mask_BxL[:, 1:] > 0
  ours_logp = ours.logp()
  t0 = time.perf_counter()
  first = ours.step()
  result["ours_compile_s"] = ours.compile_s
  result["ours_first_step_s"] = time.perf_counter() - t0
  result["ours_loss"] = first["loss"]
  result["ours_grad_norm"] = first["grad_norm"]
  if theirs is not None:
    threads = torch_threads or bench_machine.cpu_cores()
    theirs.torch.set_num_threads(threads)
    hf_logp = theirs.logp()
    hf_first = theirs.step()  # warm-up, and the parity check
  # Alternate the sides, so that both see the same load on a shared host.
  ours_times, hf_times = [], []
  for _ in range(iters):
    ours_times.append(_median_time(ours.step, 1))
    if theirs is not None:
      hf_times.append(_median_time(theirs.step, 1))
  ours_s = float(np.median(ours_times))
  # Without the embedding table (a gather, not a matmul), plus attention
  # scores and mixing: 3 (fwd + bwd) x 2 matmuls x 2 L^2 D per row, layer.
  t = cfg.text
  embed = t.vocab_size * t.hidden_size
  attention = 12.0 * t.num_layers * b * length**2 * t.hidden_size
  matmul_flops = 6.0 * (n_params - embed) * tokens + attention
  result.update(
    ours_s=ours_s,
    ours_tokens_per_s=tokens / ours_s,
    xla_flops=ours.flops,
    analytic_flops=6.0 * n_params * tokens,
    analytic_matmul_flops=matmul_flops,
  )
  result["ours_flops_per_s"] = ours.flops / ours_s
  if theirs is not None:
    hf_s = float(np.median(hf_times))
    result.update(
      torch_threads=float(threads),
      hf_loss=hf_first["loss"],
      hf_grad_norm=hf_first["grad_norm"],
      hf_s=hf_s,
      hf_tokens_per_s=tokens / hf_s,
      ratio=hf_s / ours_s,
      loss_abs_diff=abs(result["ours_loss"] - hf_first["loss"]),
      grad_norm_rel_diff=abs(result["ours_grad_norm"] - hf_first["grad_norm"])
      / max(hf_first["grad_norm"], 1e-30),
      logp_max_abs_diff=float(np.abs(ours_logp - hf_logp)[mask].max()),
    )
  if profile:
    parts = profile_ours(ours, iters)
    result.update({f"part_{k}": v for k, v in parts.items()})
    result["ops"] = {"stepjax": op_profile.xla_op_times(
      ours.step, ours.compiled.as_text(), iters
    )}  # fmt: skip
    if theirs is not None:
      result["ops"]["transformers"] = op_profile.torch_op_times(
        theirs.step, iters
      )
  if peak:
    peak_run = bench_machine.matmul_peak(2048)
    result["peak_flops_per_s"] = peak_run["median_flops_per_s"]
    result["best_peak_flops_per_s"] = peak_run["best_flops_per_s"]
  return result


def format_table(result: dict[str, Any]) -> str:
  lines = [
    f"{'side':<14}{'tokens/s':>10}{'ms/update':>11}{'ratio':>8}"
    "   (ratio: transformers ms / side ms)",
    f"{'stepjax':<14}{result['ours_tokens_per_s']:>10.0f}"
    f"{result['ours_s'] * 1e3:>11.1f}{result.get('ratio', float('nan')):>8.2f}",
  ]
  if "hf_s" in result:
    side = f"hf {result['torch_threads']:.0f} thr"
    lines.append(
      f"{side:<14}{result['hf_tokens_per_s']:>10.0f}"
      f"{result['hf_s'] * 1e3:>11.1f}{1.0:>8.2f}"
    )
  lines.append(
    f"update: {result['rows']:.0f} rows x {result['seq_len']:.0f} tokens, "
    f"{result['params'] / 1e6:.2f}M params; stepjax compile "
    f"{result['ours_compile_s']:.2f} s; stepjax runs "
    + (
      "each prompt once per group (rl.share_prompt)"
      if result.get("share_prompt")
      else "every row whole (--whole_rows)"
    )
  )
  gflop = result["xla_flops"] / 1e9
  lines.append(
    f"FLOPs/update: XLA cost analysis {gflop:.2f} G, 6*params*tokens "
    f"{result['analytic_flops'] / 1e9:.2f} G (without the embedding, "
    f"with attention {result['analytic_matmul_flops'] / 1e9:.2f} G); "
    f"stepjax {result['ours_flops_per_s'] / 1e9:.2f} GFLOP/s"
  )
  if "peak_flops_per_s" in result:
    peak = result["peak_flops_per_s"]
    lines.append(
      f"matmul peak (2048^3 f32, median) {peak / 1e9:.2f} GFLOP/s (best "
      f"{result['best_peak_flops_per_s'] / 1e9:.2f}): stepjax at "
      f"{100 * result['ours_flops_per_s'] / peak:.1f}% (XLA count), "
      f"{100 * result['analytic_flops'] / result['ours_s'] / peak:.1f}% "
      "(6*params*tokens)"
    )
  if "hf_s" in result:
    lines.append(
      f"parity (first update): loss {result['ours_loss']:.6f} vs "
      f"{result['hf_loss']:.6f} (|diff| {result['loss_abs_diff']:.2e}); "
      f"grad norm {result['ours_grad_norm']:.6f} vs "
      f"{result['hf_grad_norm']:.6f} (rel {result['grad_norm_rel_diff']:.2e})"
      f"; completion logp max |diff| {result['logp_max_abs_diff']:.2e}"
    )
  parts = [k for k in result if k.startswith("part_")]
  if parts:
    lines.append(
      "stepjax parts (ms): "
      + ", ".join(f"{k[5:-2]} {result[k] * 1e3:.1f}" for k in parts)
    )
  for side, summary in result.get("ops", {}).items():
    lines.append(op_profile.format_summary(side, summary))
  return "\n".join(lines)


def main(argv=None) -> dict[str, Any]:
  argv = sys.argv[1:] if argv is None else argv
  given, rest = bench_args.parse(
    argv,
    ("--profile", "--whole_rows"),
    "python -m stepjax.train.bench [ITERS] [--profile] [--whole_rows]",
    max_numbers=1,
  )
  iters = rest[0] if rest else 5
  result = bench_train(
    iters=iters,
    profile="--profile" in given,
    share_prompt="--whole_rows" not in given,
  )
  print(format_table(result))
  return result


if __name__ == "__main__":
  main()
