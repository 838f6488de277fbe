"""Sampler throughput: stepjax `sampler.generate` vs transformers `generate`.

Both sides run the `ModelConfig.bench()` policy with the same random
weights (ours are written with `hf_convert.save_hf` and loaded by
transformers' `Qwen2_5_VLForConditionalGeneration`), in float32 on this
host's CPU: P prompts x G samples, one image and `text_tokens` text tokens
per prompt, exactly `new_tokens` sampled tokens per row at temperature 1
with no top-k / top-p and no stop id (HF: do_sample, top_k=0, top_p=1,
min_new_tokens = max_new_tokens; ours: eos_ids=(), suppress_ids=()).
tokens/s counts generated tokens (P * G * new_tokens) over the median
wall time of `iters` runs after one warm-up; our compile time (first call
minus a steady call) is reported apart. `ours_prefill_s` is a steady
1-token run (image encoding + prefill + one sample), which splits our time
into prefill and per-step decode.

Run `python -m stepjax.sampling.bench [ITERS [TORCH_THREADS ...]]
[--profile]` or `stepjax bench sampler`; the table's starred transformers
row is the one `ratio` refers to. `--profile` adds both sides' time per
kind of op per sampler call (`op_profile`: matmuls, layout copies such as
transformers' KV-cache concatenation, reductions, gathers, elementwise
work such as its sampling noise), transformers at the starred thread count.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from stepjax import bench_args, op_profile
from stepjax.models import config as config_lib
from stepjax.models import hf_convert, vision_index, vlm
from stepjax.sampling import sampler


def bench_grid(cfg, image_px: int) -> tuple[int, int, int]:
  """grid_thw of a square image_px-pixel bench image: one frame of
  patches, or for InternViT as many whole tiles as that many patches fill
  (at least one)."""
  v = cfg.vision
  side = image_px // v.patch_size
  if not v.image_size:
    return 1, side, side
  return max(1, side * side // v.tile_side**2), v.tile_side, v.tile_side


def prompt_batch(cfg, prompts, image_px, text_tokens, seed):
  """Numpy prompts: text, <vision_start>, image pads, <vision_end>, text."""
  rng = np.random.default_rng(seed)
  grid = bench_grid(cfg, image_px)
  grid_Px3 = np.tile(np.array([grid], np.int32), (prompts, 1))
  patches = int(np.prod(grid))
  n_img = patches // cfg.vision.merge_unit
  head = text_tokens // 4
  rows = []
  for _ in range(prompts):
    text = rng.integers(0, cfg.bos_token_id, text_tokens).tolist()
    image = (
      [cfg.vision_start_token_id]
      + [cfg.image_pad_token_id] * n_img
      + [cfg.vision_end_token_id]
    )
    rows.append(text[:head] + image + text[head:])
  ids = np.asarray(rows, np.int32)
  n_rows = vision_index.bucket_rows(grid_Px3)
  pixels = rng.standard_normal((prompts, patches, cfg.vision.patch_dim)).astype(
    np.float32
  )
  pixels_PxNxP = np.zeros((prompts, n_rows, cfg.vision.patch_dim), np.float32)
  pixels_PxNxP[:, :patches] = pixels
  return {
    "prompt_ids_BxT": ids,
    "prompt_mask_BxT": np.ones_like(ids),
    "pixels_IxNxP": pixels_PxNxP,
    "grid_thw_Ix3": grid_Px3,
    "image_prompt_I": np.arange(prompts, dtype=np.int32),
    "flat_pixels": pixels.reshape(-1, cfg.vision.patch_dim),
  }


def _median_time(fn, iters):
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def bench_sampler(
  prompts: int = 4,
  group_size: int = 8,
  new_tokens: int = 128,
  text_tokens: int = 48,
  image_px: int = 112,
  iters: int = 3,
  seed: int = 0,
  hf: bool = True,
  torch_threads: tuple[int, ...] | None = None,
  preset: str = "bench",
  profile: bool = False,
) -> dict[str, Any]:
  """Times both samplers; returns seconds, tokens/s and their ratio.

  preset: the `ModelConfig` classmethod of the policy (`bench`; `tiny` for
  tests). profile: also `ops`, each side's `op_profile` summary per call.

  torch_threads: thread counts to time transformers with; the first (by
  default the number of CPU cores) gives `hf_s`, `hf_tokens_per_s` and
  `ratio`; each count n also gives `hf_{n}t_s`, `hf_{n}t_tokens_per_s`.
  """
  import torch  # the benchmark's baseline; not a dependency of sampling
  import transformers

  cfg = getattr(config_lib.ModelConfig, preset)()
  model = vlm.create(cfg, seed)
  graphdef, params = nnx.split(model, nnx.Param)
  batch = prompt_batch(cfg, prompts, image_px, text_tokens, seed)
  n_gen = prompts * group_size * new_tokens
  opts = dict(
    group_size=group_size,
    temperature=1.0,
    eos_ids=(),
    suppress_ids=(),
    pad_id=cfg.pad_token_id,
  )
  key = [jax.random.key(seed)]

  def ours(max_new_tokens=new_tokens):
    key[0], sub = jax.random.split(key[0])
    prompt = sampler.prepare_inputs(batch, cfg)
    out = sampler.generate(
      graphdef, params, prompt, sub, max_new_tokens=max_new_tokens, **opts
    )
    return jax.block_until_ready(out)

  first = _median_time(ours, 1)
  _median_time(lambda: ours(1), 1)  # compile the prefill-only variant
  ours_s = _median_time(ours, iters)
  out = ours()
  assert out.tokens_BxR.shape == (prompts * group_size, new_tokens)
  assert int(out.lengths_B.min()) == new_tokens
  prefill_s = _median_time(lambda: ours(1), iters)
  result = {
    "tokens": float(n_gen),
    "ours_s": ours_s,
    "ours_tokens_per_s": n_gen / ours_s,
    "ours_compile_s": first - ours_s,
    "ours_prefill_s": prefill_s,
    "ours_decode_step_ms": 1e3 * (ours_s - prefill_s) / (new_tokens - 1),
  }
  if profile:
    result["ops"] = {
      "stepjax": _profile_ours(
        graphdef, params, batch, cfg, opts, new_tokens, seed, iters
      )
    }
  if not hf:
    return result

  threads = torch_threads or (os.cpu_count() or 1,)
  with tempfile.TemporaryDirectory() as tmp:
    hf_convert.save_hf(params, cfg, tmp)
    hf_model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
      tmp, dtype=torch.float32
    ).eval()
  ids = torch.tensor(batch["prompt_ids_BxT"], dtype=torch.long)
  inputs = dict(
    input_ids=ids,
    attention_mask=torch.ones_like(ids),
    pixel_values=torch.tensor(batch["flat_pixels"]),
    image_grid_thw=torch.tensor(batch["grid_thw_Ix3"], dtype=torch.long),
    mm_token_type_ids=(ids == cfg.image_pad_token_id).long(),
  )
  hf_opts = dict(
    do_sample=True,
    num_return_sequences=group_size,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    max_new_tokens=new_tokens,
    min_new_tokens=new_tokens,
    pad_token_id=cfg.pad_token_id,
  )

  def theirs():
    with torch.inference_mode():
      return hf_model.generate(**inputs, **hf_opts)

  want = (prompts * group_size, ids.shape[1] + new_tokens)
  for i, n in enumerate(threads):
    torch.set_num_threads(n)
    seqs = theirs()  # warm-up
    assert tuple(seqs.shape) == want, (seqs.shape, want)
    hf_s = _median_time(theirs, iters)
    result[f"hf_{n}t_s"] = hf_s
    result[f"hf_{n}t_tokens_per_s"] = n_gen / hf_s
    if i == 0:
      result.update(
        hf_s=hf_s,
        hf_tokens_per_s=n_gen / hf_s,
        ratio=hf_s / ours_s,
        torch_threads=float(n),
      )
      if profile:
        result["ops"]["transformers"] = op_profile.torch_op_times(theirs, iters)
  return result


def _profile_ours(graphdef, params, batch, cfg, opts, new_tokens, seed, iters):
  """Our sampler call, compiled once and timed op by op."""
  prompt = sampler.prepare_inputs(batch, cfg)
  key = jax.random.key(seed)
  compiled = sampler.lower_generate(
    graphdef, params, prompt, key, max_new_tokens=new_tokens, **opts
  ).compile()

  def call():
    return jax.block_until_ready(compiled(params, prompt, key))

  call()
  return op_profile.xla_op_times(call, compiled.as_text(), iters)


def format_table(result: dict[str, Any]) -> str:
  lines = [
    f"{'side':<14}{'tokens/s':>10}{'seconds':>10}{'ratio':>8}"
    "   (ratio: transformers* seconds / side seconds)"
  ]
  lines.append(
    f"{'stepjax':<14}{result['ours_tokens_per_s']:>10.0f}"
    f"{result['ours_s']:>10.3f}{result.get('ratio', float('nan')):>8.2f}"
  )
  for key in result:
    if key.startswith("hf_") and key.endswith("t_s"):
      n = key[3:-3]
      side = f"hf {n} thr"
      if float(n) == result["torch_threads"]:
        side += "*"
      lines.append(
        f"{side:<14}{result[key[:-2] + '_tokens_per_s']:>10.0f}"
        f"{result[key]:>10.3f}{result['hf_s'] / result[key]:>8.2f}"
      )
  lines.append(
    f"stepjax compile {result['ours_compile_s']:.2f} s, prefill "
    f"{result['ours_prefill_s'] * 1e3:.1f} ms, decode step "
    f"{result['ours_decode_step_ms']:.2f} ms"
  )
  for side, summary in result.get("ops", {}).items():
    lines.append(op_profile.format_summary(side, summary, per="sampler call"))
  return "\n".join(lines)


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  given, rest = bench_args.parse(
    argv,
    ("--profile",),
    "python -m stepjax.sampling.bench [ITERS [THREADS...]] [--profile]",
  )
  iters = rest[0] if rest else 3
  threads = tuple(rest[1:]) or None
  result = bench_sampler(
    iters=iters, torch_threads=threads, profile="--profile" in given
  )
  print(format_table(result))
  return result


if __name__ == "__main__":
  main()
