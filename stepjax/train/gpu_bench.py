"""`stepjax bench gpu`: the RL update and the sampler at the 3B model's shapes.

Model and settings from configs/qwen25vl_3b_mrpo.py (mesh=cpu: one host's
devices): the qwen25vl_3b preset in bfloat16 compute over float32 params,
rematerialised layers, G=8, the recipe's RL loss (PPO clip, KL to a
reference with beta, the step-value head) and AdamW with `optim.grad_accum`
micro-batches per optimizer step. Weights are random (drawn on the device;
nothing is downloaded). One device; no sharding.

update  one optimizer step = `accum` micro-steps of the trainer's jitted
        `steps.train_step(kind="rl")` (state donated, as the trainer runs
        it), each on `rows` completions of `seq` tokens: text, one image of
        image_px^2 pixels, text, then `completion` completion tokens.
        tokens/s = accum * rows * seq / median seconds per optimizer step
        (`iters` steps after one warm-up step).
        mfu = XLA's FLOP count of the compiled micro-step
        (`compile().cost_analysis()`, which includes the rematerialised
        recomputation) x accum / seconds / the chip's peak; mfu_model is
        the same with the model's FLOPs (matmuls x 6 x tokens, attention;
        no recomputation), the usual MFU.
sampler `sampler.generate` on `sample_prompts` x G rows (64), each prompt
        `seq - new_tokens` tokens with one image, exactly `new_tokens` (512)
        sampled tokens per row (no stop id) at the config's temperature;
        tokens/s = rows * new_tokens / median seconds of `iters` runs after
        one warm-up (compile) run.

The peak: `peak_tflops=X` if given, else the chip's dense bf16 peak from
`bench_machine.CHIP_PEAKS` by device_kind, else (a CPU, an unknown chip) a
measured jitted bf16 matmul (best of 10).

Options (`stepjax bench gpu key=value ...`): tiny (the tiny preset at small
shapes, a CPU smoke test), iters=3, rows=8, seq=1024, completion=512,
image_px=448, accum=0 (0: the config's optim.grad_accum), new_tokens=512,
sample_prompts=8, peak_tflops=0, param_dtype= (the config's),
update=true, sampler=true. On an 80 GB chip the float32 state (params,
two Adam moments and the accumulated gradients, 60 GB) leaves little room:
use param_dtype=bfloat16 or accum=1 there.
"""

from __future__ import annotations

import functools
import pathlib
import time
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepjax import bench_machine, config_utils
from stepjax.errors import InputError
from stepjax.models import config as config_lib
from stepjax.models import vlm
from stepjax.sampling import bench as sampling_bench
from stepjax.sampling import sampler
from stepjax.train import batches, optim, policy, steps
from stepjax.train import bench as train_bench
from stepjax.train import state as state_lib

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs"
CONFIG_3B = CONFIG / "qwen25vl_3b_mrpo.py"

DEFAULTS = dict(
  tiny=False,
  iters=3,
  rows=8,
  seq=1024,
  completion=512,
  image_px=448,
  accum=0,
  new_tokens=512,
  sample_prompts=8,
  peak_tflops=0.0,
  param_dtype="",
  update=True,
  sampler=True,
)
# Models under this many params are drawn on the host (no compiles).
_HOST_INIT_MAX = 50_000_000
# The CPU smoke test's shapes (`tiny`): 2 prompts x G=2.
TINY = dict(
  rows=4, seq=48, completion=16, image_px=56, new_tokens=8, sample_prompts=2
)


def job_config(tiny: bool, param_dtype: str = "", accum: int = 0) -> Any:
  """The 3B recipe's job config (tiny: the tiny preset, G=2)."""
  config = config_utils.load_config_file(CONFIG_3B, "mesh=cpu")
  updates: dict[str, Any] = {}
  if tiny:
    updates.update({"model.preset": "tiny", "sampling.group_size": 2})
    updates["optim.grad_accum"] = 2
  if param_dtype:
    updates["model.param_dtype"] = param_dtype
  if accum:
    updates["optim.grad_accum"] = accum
  return config_utils.with_updates(config, updates)


def model_config(config: Any) -> config_lib.ModelConfig:
  """The ModelConfig the trainer builds (`policy.model_config`), with the
  preset's own vocabulary and special token ids standing in for a
  tokenizer's."""
  ids = getattr(config_lib.ModelConfig, config.model.preset)()
  tok_info = types.SimpleNamespace(
    vocab_size=ids.text.vocab_size,
    eos_id=ids.eos_token_id,
    pad_id=ids.pad_token_id,
    image_pad_id=ids.image_pad_token_id,
    vision_start_id=ids.vision_start_token_id,
    vision_end_id=ids.vision_end_token_id,
  )
  return policy.model_config(
    config_utils.with_updates(config, {"init_from": ""}), tok_info
  )


def random_params(abstract: Any, scale: float, seed: int) -> Any:
  """Params of `abstract`'s shapes and dtypes drawn on the device:
  N(0, scale), norm scales 1. One small jit per distinct shape (the
  layers repeat a few), so it compiles in seconds; the 3B model's 3.8e9
  draws would take minutes on the host."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  key = jax.random.key(seed)
  out = []
  for i, (path, leaf) in enumerate(leaves):
    if "scale" in jax.tree_util.keystr(path):
      out.append(jnp.ones(leaf.shape, leaf.dtype))
    else:
      sub = jax.random.fold_in(key, i)
      out.append(_normal(sub, tuple(leaf.shape), jnp.dtype(leaf.dtype), scale))
  return jax.tree_util.tree_unflatten(treedef, out)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _normal(key, shape, dtype, scale):
  return (jax.random.normal(key, shape) * scale).astype(dtype)


def update_batch(
  cfg,
  rows: int,
  group: int,
  seq: int,
  completion: int,
  image_px: int,
  seed: int = 0,
) -> batches.UpdateBatch:
  """A host RL update batch with every field the recipe's loss reads."""
  n_img = (image_px // cfg.vision.patch_size) ** 2 // cfg.vision.merge_unit
  prompt_text = seq - completion - n_img - 2
  if prompt_text < 1 or rows % group:
    raise InputError(
      f"bench gpu: seq={seq} must exceed completion={completion} + "
      f"{n_img + 2} image tokens, and rows={rows} divide by G={group}"
    )
  batch, _ = train_bench.make_batch(
    cfg, rows // group, group, prompt_text, completion, image_px, seed
  )
  rng = np.random.default_rng(seed + 2)
  b, length = batch.seq.ids_BxL.shape
  loss_BxL = batch.seq.loss_mask_BxL
  ref_BxL = (-rng.exponential(size=(b, length)) * loss_BxL).astype(np.float32)
  # Eight steps per completion, the last column of each a step end.
  col = np.arange(length)[None] - (length - completion)
  step_id = np.where(col >= 0, col * 8 // completion, -1)
  step_id_BxL = np.where(loss_BxL > 0, step_id, -1).astype(np.int32)
  step_valid_BxL = (step_id_BxL >= 0) & (rng.random((b, length)) < 0.7)
  return batch.replace(
    ref_logp_BxL=ref_BxL,
    old_logp_BxL=ref_BxL,
    value_labels=batches.ValueLabels(
      step_id_BxL=step_id_BxL,
      step_valid_BxL=step_valid_BxL.astype(np.int32),
      label_mask_B=np.ones((b,), np.int32),
    ),
  )


def model_flops(
  cfg, abstract: Any, rows: int, seq: int, images: int, patches: int
) -> float:
  """FLOPs of one update's model (forward + backward = 3 x forward): 2 per
  multiply-add of every matmul weight per token (the decoder's and the
  tied LM head over rows x seq tokens; the vision tower's over images x
  patches, its merger over a quarter of them), plus attention's scores
  and mixing (dense: L^2 per row and layer; vision: windows). Embedding
  gathers, norms and biases are left out."""
  text, vis = cfg.text, cfg.vision
  decoder = merger = blocks = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    key = jax.tree_util.keystr(path)
    if "kernel" not in key:
      continue
    size = int(np.prod(leaf.shape))
    if "'language'" in key:
      decoder += size
    elif "merger" in key:  # the merger and Qwen3-VL's DeepStack mergers
      merger += size
    else:
      blocks += size
  if cfg.tie_word_embeddings:
    decoder += text.vocab_size * text.hidden_size
  tokens = rows * seq
  heads_dim = text.num_heads * text.head_dim
  attention = 4.0 * text.num_layers * rows * seq**2 * heads_dim
  full = vis.num_full_attention_blocks
  window = (vis.window_size // vis.patch_size) ** 2
  # Vision: full attention in `full` blocks, windows in the others.
  keys = full * patches + (vis.depth - full) * min(window, patches)
  attention += 4.0 * images * vis.hidden_size * patches * keys
  matmuls = 2.0 * (
    decoder * tokens + blocks * images * patches + merger * images * patches / 4
  )
  return 3.0 * (matmuls + attention)


def _peak(given_tflops: float, dtype: str, tiny: bool) -> tuple[float, str]:
  if given_tflops > 0:
    return given_tflops * 1e12, "given"
  kind = jax.devices()[0].device_kind
  table = bench_machine.chip_peak(kind)
  if table is not None:
    return table, f"datasheet bf16 peak of {kind}"
  run = bench_machine.matmul_peak(256 if tiny else None, dtype=dtype)
  return run["best_flops_per_s"], f"measured {dtype} matmul ({kind})"


def bench_update(config: Any, cfg, graphs, params, value_params, opts: dict):
  """Times optimizer steps of the recipe's update; see the module doc."""
  accum = int(config.optim.grad_accum)
  g = config.sampling.group_size
  host = update_batch(
    cfg, opts["rows"], g, opts["seq"], opts["completion"], opts["image_px"]
  )
  batch = jax.device_put(host)
  tx = optim.rl_optimizer(config)
  trainables = {"policy": params, "value": value_params}
  state = state_lib.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    value_params=value_params,
    opt_state=jax.jit(tx.init)(trainables),
    rng=jnp.zeros((2,), jnp.uint32),
  )
  fn = functools.partial(
    steps.train_step,
    graphs=graphs,
    tx=tx,
    opts=steps.options_from_config(config),
    kind="rl",
  )
  t0 = time.perf_counter()
  lowered = jax.jit(fn, donate_argnums=(0,)).lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  flops = train_bench.xla_flops(compiled)
  lowered_flops = train_bench.xla_flops(lowered)

  def optimizer_step(state):
    for _ in range(accum):
      state, metrics = compiled(state, batch)
    return state, jax.device_get(metrics)

  t0 = time.perf_counter()
  state, first = optimizer_step(state)
  first_s = time.perf_counter() - t0
  times = []
  for _ in range(opts["iters"]):
    t0 = time.perf_counter()
    state, metrics = optimizer_step(state)
    times.append(time.perf_counter() - t0)
  seconds = float(np.median(times))
  rows, length = host.seq.ids_BxL.shape
  tokens = accum * rows * length
  images = host.seq.images.pixels_IxNxP.shape[0]
  patches = (opts["image_px"] // cfg.vision.patch_size) ** 2
  model = accum * model_flops(cfg, state.params, rows, length, images, patches)
  return state.params, {
    "update_rows": rows,
    "update_seq": length,
    "update_accum": accum,
    "update_tokens": tokens,
    "update_compile_s": compile_s,
    "update_first_step_s": first_s,
    "update_s": seconds,
    "update_s_min": float(min(times)),
    "update_s_max": float(max(times)),
    "update_tokens_per_s": tokens / seconds,
    "xla_flops_per_micro_step": flops,
    "xla_flops_per_micro_step_lowered": lowered_flops,
    "model_flops_per_step": model,
    "update_flops_per_s": accum * flops / seconds,
    "update_loss": float(metrics["loss"]),
    "update_first_loss": float(first["loss"]),
  }


def bench_sampler(config: Any, cfg, graphs, params, opts: dict) -> dict:
  """Times `sampler.generate` at rows x new_tokens; see the module doc."""
  g = config.sampling.group_size
  prompts, new = opts["sample_prompts"], opts["new_tokens"]
  n_img = (opts["image_px"] // cfg.vision.patch_size) ** 2
  n_img //= cfg.vision.merge_unit
  text = opts["seq"] - new - n_img - 2
  if text < 1:
    raise InputError(
      f"bench gpu: seq={opts['seq']} must exceed new_tokens={new} + "
      f"{n_img + 2} image tokens"
    )
  host = sampling_bench.prompt_batch(cfg, prompts, opts["image_px"], text, 0)
  prompt = sampler.prepare_inputs(host, cfg)
  # Decoding has no backward pass to save memory for, and nnx.remat inside
  # the decode loop's trace fails (flax TraceContextError): sample with
  # the same modules, not rematerialised.
  graphdef = graphs.policy
  if cfg.remat:
    graphdef, _ = vlm.abstract(cfg.replace(remat=False))
  key = [jax.random.key(0)]

  def run():
    key[0], sub = jax.random.split(key[0])
    out = sampler.generate(
      graphdef,
      params,
      prompt,
      sub,
      group_size=g,
      max_new_tokens=new,
      temperature=config.sampling.temperature,
      top_k=config.sampling.top_k,
      top_p=config.sampling.top_p,
      eos_ids=(),
      pad_id=cfg.pad_token_id,
    )
    return jax.block_until_ready(out)

  t0 = time.perf_counter()
  out = run()
  first_s = time.perf_counter() - t0
  if int(np.min(out.lengths_B)) != new:
    raise AssertionError(f"rows stopped before {new} tokens")
  times = []
  for _ in range(opts["iters"]):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  seconds = float(np.median(times))
  rows = prompts * g
  return {
    "sampler_rows": rows,
    "sampler_prompt_tokens": int(host["prompt_ids_BxT"].shape[1]),
    "sampler_new_tokens": new,
    "sampler_first_s": first_s,
    "sampler_s": seconds,
    "sampler_s_min": float(min(times)),
    "sampler_s_max": float(max(times)),
    "sampler_tokens_per_s": rows * new / seconds,
    "sampler_ms_per_token_step": 1e3 * seconds / new,
  }


def bench_gpu(**options: Any) -> dict[str, Any]:
  """Runs the update and / or sampler benches; see the module doc."""
  opts = dict(DEFAULTS)
  if options.get("tiny"):
    opts.update(TINY)  # small shapes, unless given
  opts.update(options)
  if opts["iters"] < 1:
    raise InputError(f"bench gpu: iters={opts['iters']} must be >= 1")
  config = job_config(opts["tiny"], opts["param_dtype"], opts["accum"])
  cfg = model_config(config)
  graphs, abstract, value_abstract = policy.abstract(cfg)
  kind = jax.devices()[0].device_kind
  result: dict[str, Any] = {
    "preset": config.model.preset,
    "device_kind": kind,
    "compute_dtype": cfg.dtype,
    "param_dtype": cfg.param_dtype,
    "remat": cfg.remat,
    "attention": cfg.attention,
    "group_size": config.sampling.group_size,
    "params": vlm.param_count(cfg),
  }
  t0 = time.perf_counter()
  if result["params"] < _HOST_INIT_MAX:
    params = jax.device_put(train_bench.random_params(cfg, 0))
  else:
    params = random_params(abstract, cfg.initializer_range, 0)
  value_params = random_params(value_abstract, cfg.initializer_range, 1)
  jax.block_until_ready(params)
  result["init_s"] = time.perf_counter() - t0
  print(
    f"gpu bench: {kind}, {result['params'] / 1e9:.2f}B params, init "
    f"{result['init_s']:.1f} s",
    flush=True,
  )
  peak, source = _peak(opts["peak_tflops"], cfg.dtype, opts["tiny"])
  result.update(peak_flops_per_s=peak, peak_source=source)
  if jax.default_backend() != "cpu":  # what the chip reaches on a matmul
    run = bench_machine.matmul_peak(dtype=cfg.dtype)
    result["matmul_best_flops_per_s"] = run["best_flops_per_s"]
    result["matmul_n"] = run["n"]
  if opts["update"]:
    params, part = bench_update(config, cfg, graphs, params, value_params, opts)
    del value_params
    part["mfu"] = part["update_flops_per_s"] / peak
    part["mfu_model"] = part["model_flops_per_step"] / part["update_s"] / peak
    result.update(part)
    print(format_update(result), flush=True)
  if opts["sampler"]:
    result.update(bench_sampler(config, cfg, graphs, params, opts))
    print(format_sampler(result), flush=True)
  return result


def format_update(r: dict[str, Any]) -> str:
  return (
    f"update ({r['preset']}, {r['compute_dtype']} compute, {r['param_dtype']} "
    f"params, remat {r['remat']}): {r['update_accum']} x {r['update_rows']} "
    f"rows x {r['update_seq']} tokens per optimizer step: "
    f"{r['update_tokens_per_s']:,.0f} tokens/s ({r['update_s']:.3f} s, range "
    f"{r['update_s_min']:.3f}-{r['update_s_max']:.3f}; compile "
    f"{r['update_compile_s']:.1f} s)\n"
    f"MFU {100 * r['mfu']:.1f}% by XLA's FLOP count "
    f"({r['xla_flops_per_micro_step'] / 1e12:.3g} TFLOP per micro-step, "
    f"recomputation included), {100 * r['mfu_model']:.1f}% by model FLOPs "
    f"({r['model_flops_per_step'] / 1e12:.3g} TFLOP per step); peak "
    f"{r['peak_flops_per_s'] / 1e12:.1f} TFLOP/s ({r['peak_source']})"
  )


def format_sampler(r: dict[str, Any]) -> str:
  return (
    f"sampler: {r['sampler_rows']} rows x {r['sampler_new_tokens']} new "
    f"tokens after {r['sampler_prompt_tokens']} prompt tokens: "
    f"{r['sampler_tokens_per_s']:,.0f} tokens/s ({r['sampler_s']:.2f} s, range "
    f"{r['sampler_s_min']:.2f}-{r['sampler_s_max']:.2f}; first run with "
    f"compile {r['sampler_first_s']:.1f} s)"
  )


def main(argv: list[str], config: Any = None) -> dict[str, Any]:
  del config  # the 3B recipe's config is this bench's own
  args = config_utils.parse_arg(",".join(argv), **DEFAULTS)
  given = {a.partition("=")[0].strip() for a in ",".join(argv).split(",")}
  return bench_gpu(**{k: v for k, v in args.items() if k in given})
