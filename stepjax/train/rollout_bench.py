"""`stepjax bench rollout`: one whole RL step of a job, timed by part.

Runs the trainer's own RL step (`Trainer.rl_step`: `Trainer.rollout`, then
`Trainer.apply_update`) on the --config job, by default the default job
(configs/synthmed_tiny.py: 4 prompts x G=8, `sampling.max_new_tokens`, the
synthmed preset), in a temporary workdir, from a fresh policy or
--config.init_from, with the SFT phase skipped: `steps` timed RL steps
after `warmup` steps (which compile). Nothing in the step is changed: the
parts are timed by wrapping the trainer's methods, each wrapper waiting
for the device where the trainer reads the result back at once anyway.

  data          next(batch) from the RL pipeline (decode, preprocess, pad)
  sample        `Trainer.sample`: the jit sampler, then the update's
                sequences built from its output on the device; token ids
                back on the host
  value_logits  the step-value head's forward (process=value_head|hybrid)
  prepare       placing the update batch on the devices, then one jitted
                call: advantages and (beta > 0) the reference policy's
                log-probs (`Trainer.prepare_fn`)
  update        `Trainer.apply_update`: num_iterations x grad_accum
                jitted updates, waited for (the trainer itself reads
                their metrics one step late)
  score         the rest of `Trainer.rollout`, host work: decode, steps,
                rewards, process labels, the update batch's labels
  step          the whole step (data + `rl_step`); its parts sum to it

Each part: median, min and max seconds over the timed steps, and its share
(its total over the step's total). Also the trainer's own per-step metrics
(sampling and update tokens/s, completion length) and the number of XLA
compiles during the timed steps (0 unless a new shape came up).

Options (`stepjax bench rollout key=value ...`): steps=10, warmup=2.
A freshly initialised policy rarely stops before `max_new_tokens`; pass a
trained checkpoint with --config.init_from to time completions of the
lengths a trained policy writes.
"""

from __future__ import annotations

import collections
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepjax import config_utils
from stepjax.errors import InputError
from stepjax.train import loop

PARTS = ("data", "sample", "value_logits", "prepare", "score", "update")
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class _Timer:
  """Seconds per part of the step in progress."""

  def __init__(self):
    self.parts: dict[str, float] = collections.defaultdict(float)
    self.in_update = False
    self.compiles = 0

  def on_event(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == _COMPILE_EVENT:
      self.compiles += 1

  def wrap(self, name: str, fn, block: bool = False):
    def timed(*args, **kwargs):
      t0 = time.perf_counter()
      out = fn(*args, **kwargs)
      if block:
        out = jax.block_until_ready(out)
      self.parts[name] += time.perf_counter() - t0
      return out

    return timed


def _instrument(trainer: loop.Trainer, timer: _Timer) -> None:
  """Times the trainer's parts through instance attributes (its own
  methods run unchanged underneath)."""
  sample, apply_update = trainer.sample, trainer.apply_update
  place, prepare_fn = trainer.place, trainer.prepare_fn
  value_logits_fn = trainer.value_logits_fn
  trainer.sample = timer.wrap("sample", sample)

  def timed_update(*args, **kwargs):
    timer.in_update = True
    try:
      return timer.wrap("update", apply_update, block=True)(*args, **kwargs)
    finally:
      timer.in_update = False

  def timed_place(batch):
    if timer.in_update:  # counted in the update
      return place(batch)
    return timer.wrap("prepare", place, block=True)(batch)

  trainer.apply_update = timed_update
  trainer.place = timed_place
  trainer.prepare_fn = lambda *a: timer.wrap(
    "prepare", prepare_fn(*a), block=True
  )
  trainer.value_logits_fn = lambda: timer.wrap(
    "value_logits", value_logits_fn(), block=True
  )


def bench_rollout(config: Any, steps: int = 10, warmup: int = 2) -> dict:
  """Times `steps` RL steps of `config`'s job after `warmup` steps."""
  if steps < 1 or warmup < 0:
    raise InputError(
      f"bench rollout: need steps >= 1 and warmup >= 0, got steps={steps}, "
      f"warmup={warmup}"
    )
  config = config_utils.with_updates(config, {"sft.steps": 0})
  timer = _Timer()
  jax.monitoring.register_event_duration_secs_listener(timer.on_event)
  try:
    with tempfile.TemporaryDirectory() as workdir:
      trainer = loop.Trainer(config, workdir)
      try:
        return _run(trainer, timer, steps, warmup)
      finally:
        trainer.writer.close()
        trainer.checkpointer.close()
  finally:
    jax.monitoring.unregister_event_duration_listener(timer.on_event)


def _run(trainer: loop.Trainer, timer: _Timer, steps: int, warmup: int):
  c = trainer.config
  state, _, _, _ = trainer.initial_state()
  if c.rl.beta > 0:  # as Trainer._enter_rl freezes it
    trainer.ref_params = jax.tree.map(jnp.copy, state.params)
  phase = trainer.phase_at(0)
  iterator = iter(phase.dataset)
  _instrument(trainer, timer)
  rows, first_steps = [], []
  for i in range(warmup + steps):
    timer.parts.clear()
    compiles = timer.compiles
    t0 = time.perf_counter()
    batch = next(iterator)
    t1 = time.perf_counter()
    state, m = trainer.rl_step(state, phase, batch, i)
    end = time.perf_counter()
    parts = {name: timer.parts.get(name, 0.0) for name in PARTS}
    parts["data"] = t1 - t0
    inside = sum(parts[k] for k in PARTS if k not in ("data", "score"))
    parts["score"] = (end - t1) - inside
    row = dict(parts, step=end - t0, compiles=timer.compiles - compiles)
    row["sample_tokens_per_s"] = float(m["sample_tokens_per_s"])
    row["update_tokens_per_s"] = float(m["update_tokens"]) / max(
      parts["update"], 1e-9
    )
    row["completion_length"] = float(m["completion_length"])
    (first_steps if i < warmup else rows).append(row)
  jax.block_until_ready(state)
  return _summary(c, rows, first_steps, warmup)


def _summary(c: Any, rows: list[dict], first: list[dict], warmup: int):
  result: dict[str, Any] = {
    "preset": c.model.preset,
    "prompts": c.data.batch_size,
    "group_size": c.sampling.group_size,
    "max_new_tokens": c.sampling.max_new_tokens,
    "algorithm": c.rl.algorithm,
    "process_source": c.rl.process_source,
    "beta": c.rl.beta,
    "grad_accum": c.optim.grad_accum,
    "num_iterations": c.rl.num_iterations,
    "init_from": c.init_from,
    "steps": len(rows),
    "warmup": warmup,
    "warmup_step_s": [r["step"] for r in first],
    "compiles_during_timing": sum(r["compiles"] for r in rows),
  }
  total = sum(r["step"] for r in rows)
  for name in (*PARTS, "step"):
    values = np.array([r[name] for r in rows])
    result[f"{name}_s_median"] = float(np.median(values))
    result[f"{name}_s_min"] = float(values.min())
    result[f"{name}_s_max"] = float(values.max())
    if name != "step":
      result[f"{name}_share"] = float(values.sum() / total)
  for key in ("sample_tokens_per_s", "update_tokens_per_s"):
    result[f"{key}_median"] = float(np.median([r[key] for r in rows]))
  result["completion_length_mean"] = float(
    np.mean([r["completion_length"] for r in rows])
  )
  result["per_step"] = rows
  return result


def format_table(result: dict[str, Any]) -> str:
  lines = [
    f"RL step, {result['preset']} policy: {result['prompts']} prompts x "
    f"G={result['group_size']}, up to {result['max_new_tokens']} new tokens, "
    f"{result['algorithm']} ({result['process_source']} labels, beta "
    f"{result['beta']}); {result['steps']} steps after {result['warmup']} "
    "warm-up",
    f"{'part':<14}{'median ms':>10}{'min':>9}{'max':>9}{'share':>8}",
  ]
  for name in (*PARTS, "step"):
    share = result.get(f"{name}_share", 1.0)
    lines.append(
      f"{name:<14}{1e3 * result[f'{name}_s_median']:>10.1f}"
      f"{1e3 * result[f'{name}_s_min']:>9.1f}"
      f"{1e3 * result[f'{name}_s_max']:>9.1f}{100 * share:>7.1f}%"
    )
  lines.append(
    f"sampling {result['sample_tokens_per_s_median']:,.0f} tokens/s, update "
    f"{result['update_tokens_per_s_median']:,.0f} tokens/s (medians); mean "
    f"completion {result['completion_length_mean']:.1f} tokens; XLA "
    f"compiles while timing: {result['compiles_during_timing']}"
  )
  return "\n".join(lines)


def main(argv: list[str], config: Any) -> dict:
  args = config_utils.parse_arg(",".join(argv), steps=10, warmup=2)
  result = bench_rollout(config, steps=args.steps, warmup=args.warmup)
  print(format_table(result))
  return result
