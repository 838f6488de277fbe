"""`stepjax train`: SFT warm start, then GRPO / GDPO / MRPO, resumable.

One global step counter runs over both phases: steps [0, sft.steps) are SFT
(teacher forcing on gold reasoning), steps [sft.steps, sft.steps +
train.steps) are RL. A checkpoint after step s holds the state, the data
iterator of the phase in progress and the run info (evaluations so far), so
a killed run started again with the same command continues from there and
ends with the same parameters as an uninterrupted one: every random choice
derives from (config.seed, step).

Evaluation runs after SFT (= before RL) and at the end, and every
`train.eval_every` RL steps if set, through the `evaluator` the Trainer is
given (`stepjax.eval.evaluate`, wired by `stepjax/jobs.py`): train/ never
imports eval/.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from stepjax import config_checks, rows
from stepjax.data import pipeline
from stepjax.errors import InputError, MissingInputError
from stepjax.models import hf_convert, step_value
from stepjax.rl import process
from stepjax.train import (
  batches,
  checkpoint,
  components,
  distributed,
  metrics,
  optim,
  policy,
  rollout,
  sharding,
  steps,
  vision_pretrain,
)
from stepjax.train import state as state_lib

# ---------------------------------------------------------------- trainer


@dataclasses.dataclass
class Phase:
  name: str  # "sft" | "rl"
  first_step: int
  num_steps: int
  tx: Any
  dataset: Any


class Trainer:
  """Holds what one run needs; `run()` drives both phases.

  evaluator: what evaluates the policy during `run()` (a module or object
  with `EvalTask(config=, source=, labeller=, workdir=)`, the run's eval
  context, built once here; `evaluate(policy, task, name) -> report` of a
  `policy.Policy`; `summary_line(report)`, `table(reports)` and
  `write_plots(workdir, reports)`: `stepjax.eval.evaluate`). A Trainer
  without one can take steps (`rl_step`, `sft_step`, `apply_update`) but
  not `run()`.
  """

  def __init__(self, config: Any, workdir: str, evaluator: Any = None):
    config_checks.check(config)
    self.evaluator = evaluator
    distributed.maybe_initialize(config.distributed)
    self.config = config
    self.workdir = workdir
    self.tokenizer, self.tok_info = components.load_tokenizer(config)
    self.cfg = policy.model_config(config, self.tok_info)
    self.mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_sizes(config, self.mesh)
    self.graphs, _, _ = policy.abstract(self.cfg)
    self.train_source = components.make_source(config, "train")
    self.eval_source = components.make_source(config, "eval")
    self.process_source = components.process_source(config)
    self.truth_source = components.truth_source(config)
    self.eval_task = None
    if evaluator is not None:
      self.eval_task = evaluator.EvalTask(
        config=config,
        source=self.eval_source,
        labeller=self.process_source,
        workdir=workdir,
      )
    self.bertscore = components.answer_scorer(config)
    self.phases = self._phases()
    self.total_steps = sum(p.num_steps for p in self.phases)
    self.checkpointer = checkpoint.Checkpointer(
      str(epath.Path(workdir) / "checkpoints"), config.train.keep_checkpoints
    )
    self.writer = metrics.MetricsWriter(
      workdir, self.total_steps, log_every=config.train.log_every
    )
    self._jitted: dict[Any, Any] = {}
    self._iterators: dict[str, Any] = {}
    self.ref_params = None
    self._pending: _PendingMetrics | None = None
    self._dispatched = self._last_ready = 0.0

  # -- set-up

  def _phases(self) -> list[Phase]:
    c = self.config
    think = c.tokenizer.think_tag
    phases = []
    if c.sft.steps > 0:
      opts = pipeline.PipelineOptions.from_config(
        c,
        sft=True,
        batch_size=c.sft.batch_size,
        num_epochs=None,
        model_cfg=self.cfg,
      )
      phases.append(
        Phase(
          "sft",
          0,
          c.sft.steps,
          optim.sft_optimizer(c),
          pipeline.make_dataset(
            components.sft_source(c, self.train_source),
            self.tokenizer,
            opts,
            think_tag=think,
          ),
        )
      )
    if c.train.steps > 0:
      opts = pipeline.PipelineOptions.from_config(
        c, num_epochs=None, model_cfg=self.cfg
      )
      phases.append(
        Phase(
          "rl",
          c.sft.steps,
          c.train.steps,
          optim.rl_optimizer(c),
          pipeline.make_dataset(
            self.train_source, self.tokenizer, opts, think_tag=think
          ),
        )
      )
    return phases

  def phase_at(self, step: int) -> Phase:
    for phase in self.phases:
      if step < phase.first_step + phase.num_steps:
        return phase
    return self.phases[-1]

  def _init_fn(self, tx: Any):
    return state_lib.init_fn(self.cfg, self.config.seed, tx)

  def state_shardings(self, tx: Any) -> tuple[Any, Any]:
    abstract = jax.eval_shape(self._init_fn(tx))
    shardings = sharding.state_shardings(
      abstract, self.mesh, self.config.logical_axis_rules
    )
    return abstract, shardings

  def fresh_state(self, tx: Any) -> state_lib.TrainState:
    _, shardings = self.state_shardings(tx)
    return jax.jit(self._init_fn(tx), out_shardings=shardings)()

  def reset_optimizer(self, state, tx: Any) -> state_lib.TrainState:
    """A new phase starts with fresh optimizer moments for its own tx."""
    _, shardings = self.state_shardings(tx)
    init = jax.jit(tx.init, out_shardings=shardings.opt_state)
    return state.replace(opt_state=init(state.trainables()))

  def initial_state(self) -> tuple[Any, int, dict, Any]:
    """(state, steps done, info, ref params) from the latest checkpoint in
    the workdir, else `init_from`, else a fresh init."""
    resumed = self._resume()
    if resumed is not None:
      return resumed
    first = self.phases[0]
    init_from = self.config.init_from
    if init_from:
      _check_init_from(init_from)  # before seconds of initialising
    state = self.fresh_state(first.tx)
    if init_from:
      state = self._load_init_from(state, first.tx, init_from)
    elif first.name == "sft" and self.config.sft.get("vision_pretrain_steps"):
      state = self._pretrain_vision(state, first.tx)
    return state, 0, {}, None

  def _pretrain_vision(self, state, tx: Any):
    """A fresh policy's tower trained alone first (`vision_pretrain`);
    its summary goes to WORKDIR/vision_pretrain.json."""
    params, summary = vision_pretrain.pretrain(
      self.config,
      self.cfg,
      self.graphs.policy,
      state.params,
      self.tokenizer,
      self.place,
    )
    if jax.process_index() == 0:
      path = epath.Path(self.workdir) / "vision_pretrain.json"
      path.write_text(json.dumps(summary, indent=1))
    _, shardings = self.state_shardings(tx)
    return state.replace(params=jax.device_put(params, shardings.params))

  def _resume(self) -> tuple[Any, int, dict, Any] | None:
    """Restores the newest readable checkpoint in the workdir (None if there
    is none). One that cannot be read is reported by step and path and set
    aside (never deleted); the next older one is tried."""
    steps = self.checkpointer.all_steps()
    problems = []
    for done in steps:
      try:
        info = self.checkpointer.info(done)
      except Exception as e:  # noqa: BLE001 - any damage to the files
        problems.append(self._unreadable(done, e))
        continue
      self._check_same_model(info, done)
      try:
        return self._restore(done, info)
      except Exception as e:  # noqa: BLE001 - any damage to the files
        problems.append(self._unreadable(done, e))
    if problems:
      raise InputError(
        f"no readable checkpoint in {self.checkpointer.directory}: "
        + "; ".join(problems)
        + "; start a new --workdir or restore the files"
      )
    return None

  def _unreadable(self, step: int, error: Exception) -> str:
    path = self.checkpointer.step_dir(step)
    moved = self.checkpointer.set_aside(step)
    problem = f"checkpoint {step} ({path}): {type(error).__name__}: {error}"
    logging.warning(
      "cannot read %s; moved it to %s and trying the previous checkpoint",
      problem,
      moved,
    )
    print(
      f"warning: cannot read checkpoint {step} ({path}); moved it to "
      f"{moved}, resuming from the previous one",
      flush=True,
    )
    return problem.splitlines()[0]

  def _check_same_model(self, info: dict, step: int) -> None:
    """InputError if checkpoint `step` was saved for a model of another
    shape (remat, attention or compute dtype may change on resume)."""
    changes = checkpoint.model_changes(
      checkpoint.saved_model(info),
      self.config.model.to_dict(),
      ("preset", "param_dtype", "step_value_hidden", "step_value_input"),
    )
    if not changes:
      return
    raise InputError(
      f"--workdir={self.workdir}: checkpoint {step} holds another model "
      f"({changes}); resume with the saved settings or use a new --workdir"
    )

  def _restore(self, done: int, info: dict) -> tuple[Any, int, dict, Any]:
    # The saved optimizer state belongs to the phase of the next step (a
    # phase boundary resets it before saving).
    phase = self.phase_at(min(done, self.total_steps - 1))
    abstract, shardings = self.state_shardings(phase.tx)
    target = checkpoint.abstract_with_shardings(abstract, shardings)
    iterator = None
    if info.get("iterator_phase") == phase.name:
      iterator = self._iterators[phase.name] = iter(phase.dataset)
    abstract_ref = None
    if info.get("has_ref"):
      abstract_ref = checkpoint.abstract_with_shardings(
        abstract.params, shardings.params
      )
    state, info, ref = self.checkpointer.restore(
      done, target, iterator, abstract_ref
    )
    logging.info("resumed from %s after step %d", self.workdir, done)
    return state, done, info, ref

  def _load_init_from(self, state, tx, path: str):
    abstract, shardings = self.state_shardings(tx)
    if policy.is_hf_dir(path):
      _, params = hf_convert.load_hf(path, self.cfg, shardings.params)
      logging.info("policy initialised from HF checkpoint %s", path)
    else:
      # The reader `stepjax eval` uses: the newest readable step, checked
      # against this run's model; the step-value head starts fresh.
      restored = checkpoint.restore_params(
        path,
        checkpoint.abstract_with_shardings(abstract.params, shardings.params),
        model=self.config.model,
        flag="--config.init_from",
      )
      params = restored.params
      logging.info(
        "policy initialised from Orbax checkpoint %s (step %s)",
        path,
        restored.step,
      )
    state = state.replace(params=params)
    return self.reset_optimizer(state, tx)

  # -- jitted functions

  def update_fn(self, phase: Phase, prompt_len: int = 0):
    """The jitted update of `phase`; with `prompt_len` = T (RL batches
    whose groups share a T-column prompt, `rl.share_prompt`), each prompt
    runs once per group (`steps.shared_prompt_forward`)."""
    key = ("update", phase.name, prompt_len)
    if key not in self._jitted:
      opts = dataclasses.replace(
        steps.options_from_config(self.config), prompt_len=prompt_len
      )
      fn = functools.partial(
        steps.train_step,
        graphs=self.graphs,
        tx=phase.tx,
        opts=opts,
        kind=phase.name,
      )
      _, shardings = self.state_shardings(phase.tx)
      self._jitted[key] = jax.jit(
        fn, out_shardings=(shardings, None), donate_argnums=(0,)
      )
    return self._jitted[key]

  def shared_prompt_len(self, prompt_len: int) -> int:
    """T when the RL update and reference forward run each group's
    T-column prompt once (`rl.share_prompt`, G > 1), else 0."""
    c = self.config
    share = c.rl.share_prompt and c.sampling.group_size > 1
    return int(prompt_len) if share else 0

  def prepare_fn(self, prompt_len: int, weights_C: tuple[float, ...]):
    """(ref params, placed update batch, placed advantage inputs) ->
    `steps.Prepared` (adv_B, adv_BxL and, when beta > 0, ref_logp_BxL):
    `steps.prepare_update` jitted, its outputs split by row like the
    batch. `prompt_len`: the sequences' T prompt columns."""
    adv = steps.advantage_options(self.config, weights_C)
    shared = self.shared_prompt_len(prompt_len)
    key = ("prepare", shared, adv)
    if key not in self._jitted:
      fn = functools.partial(
        steps.prepare_update,
        graphs=self.graphs,
        adv=adv,
        beta=float(self.config.rl.beta),
        shared_prompt_len=shared,
      )
      mesh = self.mesh
      self._jitted[key] = jax.jit(
        lambda ref, batch, inputs: rows.constrain(fn(ref, batch, inputs), mesh)
      )
    return self._jitted[key]

  def value_logits_fn(self):
    """(params, value params, sequences, step ids [B, L]) -> step-value
    logits [B, L] of every token, split by row (steps are read from them
    on the host: no step axis under jit)."""
    if "value" not in self._jitted:
      g = self.config.sampling.group_size
      mesh = self.mesh

      def fn(params, value_params, seq, step_id_BxL):
        _, hidden = steps.forward(self.graphs, params, seq, g)
        logits = step_value.apply(
          self.graphs.value, value_params, hidden, step_id_BxL
        )
        return rows.constrain({"value_logits_BxL": logits}, mesh)

      self._jitted["value"] = jax.jit(fn)
    return self._jitted["value"]

  # -- one step of each phase

  def sft_step(self, state, phase: Phase, batch: dict) -> tuple[Any, dict]:
    """One SFT update, dispatched: its metrics stay on the device (read
    one step late, see `log_step`)."""
    inputs = batches.sft_batch(batch, self.cfg)
    placed = self.place(inputs)
    self._dispatched = time.perf_counter()
    state, m = self.update_fn(phase)(state, placed)
    m = dict(m)
    m["token_accuracy"] = m.pop("accuracy")
    m["update_tokens"] = float(np.sum(inputs.seq.loss_mask_BxL))
    return state, m

  def policy(self, params, value_params=None) -> policy.Policy:
    """This run's policy with `params` (placed on the run's mesh)."""
    return policy.Policy(
      graphs=self.graphs,
      params=params,
      tokenizer=self.tokenizer,
      tok_info=self.tok_info,
      mesh=self.mesh,
      value_params=value_params,
    )

  def sample(self, params, batch: dict, rng, *, group_size, temperature):
    """G completions per prompt of this process's `batch`
    (`rollout.Samples`: sequences on the mesh, token ids on the host).

    The prompts are split over the mesh's batch axes: each device decodes
    its own rows, each process gets its own completions back, and each
    row's randomness depends only on its global index.
    """
    return rollout.sample(
      self.policy(params),
      batch,
      rng,
      self.config.sampling,
      group_size=group_size,
      temperature=temperature,
    )

  def rl_step(self, state, phase: Phase, batch: dict, step: int):
    """Sample, score, then `num_iterations` clipped updates (dispatched:
    the update's metrics stay on the device, read one step late)."""
    update, m = self.rollout(state, batch, step)
    prompt_len = batch["prompt_ids_BxT"].shape[1]
    state, um = self.apply_update(state, phase, update, prompt_len)
    m.update(um)
    return state, m

  def apply_update(self, state, phase: Phase, update, prompt_len=0):
    """The jitted update(s) on a `batches.UpdateBatch` of this process's
    rows (numpy) and / or arrays placed on the mesh, whose first
    `prompt_len` columns are the groups' prompts (0: not known, every row
    runs whole). Returns the new state and the last update's metrics
    (device arrays)."""
    c = self.config
    if c.optim.grad_accum > 1:
      # Micro-batches of whole groups of this process's rows.
      host = sharding.local_batch(update, self.mesh)
      micros = [
        self.place(micro)
        for micro in batches.micro_batches(
          host, c.optim.grad_accum, c.sampling.group_size
        )
      ]
    else:
      micros = [self.place(update)]
    update_fn = self.update_fn(phase, self.shared_prompt_len(prompt_len))
    m = {}
    for _ in range(c.rl.num_iterations):
      for micro in micros:
        state, m = update_fn(state, micro)
    return state, m

  def place(self, batch: Any) -> Any:
    """Global arrays from this process's rows of a typed batch: per-row
    arrays split over (data, fsdp), image slots replicated; arrays already
    on the mesh are kept (`sharding.place_batch`)."""
    return sharding.place_batch(batch, self.mesh)

  def rollout(self, state, batch: dict, step: int) -> tuple[Any, dict]:
    """Samples G completions per prompt and scores them: (update,
    metrics). The update batch is placed on the mesh once; its advantages
    and reference log-probs are computed there (`prepare_fn`)."""
    c = self.config
    g = c.sampling.group_size
    # The sampler needs the last update's parameters: wait for them here,
    # which also times that update (`settle_metrics`).
    self.settle_metrics()
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), step)
    t0 = time.perf_counter()
    samples = self.sample(
      state.params,
      batch,
      rng,
      group_size=g,
      temperature=c.sampling.temperature,
    )
    t_sample = time.perf_counter() - t0
    prompt_len = batch["prompt_ids_BxT"].shape[1]
    value_logits = None
    layout = rollout.step_layout(
      samples.tokens_BxR,
      samples.lengths_B,
      self.tokenizer,
      c.tokenizer.think_tag,
    )
    if c.rl.process_source in ("value_head", "hybrid"):
      step_ids = batches.pad_completion_arrays(
        {"step_id_BxL": layout.step_id_BxT.astype(np.int32)}, prompt_len
      )
      value_logits = self.value_logits_fn()(
        state.params,
        state.value_params,
        samples.seq,
        self.place(step_ids)["step_id_BxL"],
      )
      value_logits = rows.local(value_logits, self.mesh)["value_logits_BxL"]
      value_logits = value_logits[:, prompt_len:]
    process.reseed(self.process_source, step)  # draws depend on the step
    # Judge totals count this step's scoring only, not evaluation's calls.
    process.judge_totals(self.process_source)
    examples = batches.examples(batch)
    scored = rollout.score(
      samples.tokens_BxR,
      samples.lengths_B,
      examples,
      tokenizer=self.tokenizer,
      source=self.process_source,
      config=c,
      value_logits_BxC=value_logits,
      bertscore=self.bertscore,
      layout=layout,
    )
    label_mask = scored.has_labels_B.astype(np.int32)
    if isinstance(self.process_source, process.HybridSource):
      # Train the head only on the judge's labels, never on its own.
      label_mask = np.zeros_like(label_mask)
      label_mask[self.process_source.last_judged] = 1
    elif c.rl.process_source == "value_head":
      label_mask = np.zeros_like(label_mask)
    update = self.place(rollout.update_batch(samples, scored, label_mask))
    inputs = self.place(rollout.advantage_inputs(scored))
    prepare = self.prepare_fn(prompt_len, rollout.reward_weights(scored))
    prepared = jax.block_until_ready(prepare(self.ref_params, update, inputs))
    self._dispatched = time.perf_counter()  # the update starts now
    update = prepared.apply(update)
    m = rollout.metrics(scored, samples, g)
    m["adv_abs_mean"] = jnp.mean(jnp.abs(prepared.adv_B))  # one step late
    if self.truth_source is not None:
      m.update(rollout.label_errors(scored, examples, g, self.truth_source))
    if isinstance(self.process_source, process.HybridSource):
      m["judge_completions"] = float(len(self.process_source.last_judged))
      m["judge_share"] = len(self.process_source.last_judged) / len(
        scored.texts
      )
    m.update(process.judge_totals(self.process_source))
    sampled = float(np.sum(samples.lengths_B))  # this process's loss tokens
    m["sample_tokens_per_s"] = sampled / max(t_sample, 1e-9)
    m["update_tokens"] = c.rl.num_iterations * sampled
    return update, m

  # -- metrics, read one step late

  def log_step(self, step: int, phase: str, m: dict) -> None:
    """Queues step `step`'s metrics (device arrays stay on the device) and
    writes the previous step's: the host reads a step's results while the
    device runs the next one. `update_tokens_per_s` is filled in when the
    update is seen done (`settle_metrics`)."""
    self.flush_metrics()
    self._pending = _PendingMetrics(step, phase, m, self._dispatched)

  def settle_metrics(self) -> None:
    """Waits for the pending step's update, and times it: from its
    dispatch (or the previous update's end, if later) to now."""
    p = self._pending
    if p is None or p.settled:
      return
    # The update's metrics come out with its new state (whose buffers the
    # next update may already have taken over: donated).
    jax.block_until_ready(p.metrics)
    now = time.perf_counter()
    seconds = now - max(p.dispatched, self._last_ready)
    self._last_ready = now
    tokens = p.metrics.pop("update_tokens", None)
    if tokens is not None:
      p.metrics["update_tokens_per_s"] = tokens / max(seconds, 1e-9)
    p.settled = True

  def flush_metrics(self) -> dict | None:
    """Writes the pending step's metrics; returns them (host floats)."""
    p = self._pending
    if p is None:
      return None
    self.settle_metrics()
    self._pending = None
    return self.writer.write(p.step, p.phase, jax.device_get(p.metrics))

  # -- driver

  def evaluate(self, state, name: str) -> dict:
    self.flush_metrics()  # the steps before it are logged first
    report = self.evaluator.evaluate(
      self.policy(state.params), self.eval_task, name
    )
    line = self.evaluator.summary_line(report)
    logging.info("eval %s: %s", name, line)
    print(f"eval {name}: {line}", flush=True)
    return report

  def _enter_rl(self, state, info: dict):
    """Evaluates the policy RL starts from (unless train.eval_before_rl is
    off), gives RL its own optimizer state, and freezes the reference
    policy (a copy) when beta > 0."""
    if self.config.train.eval_before_rl:
      info["evals"]["before_rl"] = self.evaluate(state, "before_rl")
    # Saved with the run info, so a resumed run does not enter RL twice
    # (older checkpoints tell it by their "before_rl" eval).
    info["entered_rl"] = True
    if self.config.sft.steps > 0:
      state = self.reset_optimizer(state, self.phase_at(info["done"]).tx)
    if self.config.rl.beta > 0:
      self.ref_params = jax.tree.map(jnp.copy, state.params)
    return state

  def run(self) -> dict:
    """Runs (or resumes) the job; returns the evaluation reports."""
    if self.evaluator is None:
      raise ValueError(
        "Trainer.run needs an evaluator: use stepjax.jobs.train(config, "
        "workdir), which passes stepjax.eval.evaluate"
      )
    c = self.config
    state, done, info, self.ref_params = self.initial_state()
    self.writer.drop_from(done)
    info.setdefault("evals", {})
    sft_end = c.sft.steps
    while done < self.total_steps:
      info["done"] = done
      if done == sft_end and not _entered_rl(info):
        state = self._enter_rl(state, info)
      phase = self.phase_at(done)
      if phase.name not in self._iterators:
        self._iterators[phase.name] = iter(phase.dataset)
      t0 = time.perf_counter()
      batch = next(self._iterators[phase.name])
      if phase.name == "sft":
        state, m = self.sft_step(state, phase, batch)
      else:
        state, m = self.rl_step(state, phase, batch, done)
      m["step_time_s"] = time.perf_counter() - t0
      m.update(pipeline.skip_metrics(self._iterators[phase.name]))
      self.log_step(done, phase.name, m)
      done += 1
      info["done"] = done
      if done == sft_end and c.train.steps > 0:
        state = self._enter_rl(state, info)
      rl_done = done - sft_end
      if (
        c.train.eval_every
        and phase.name == "rl"
        and rl_done % c.train.eval_every == 0
        and done < self.total_steps
      ):
        name = f"rl_step_{rl_done}"
        info["evals"][name] = self.evaluate(state, name)
      if done == self.total_steps:
        info["evals"]["final"] = self.evaluate(state, "final")
      if done % c.train.checkpoint_every == 0 or done == self.total_steps:
        self.save(state, done, info)
    self.flush_metrics()
    if "final" not in info["evals"]:
      info["evals"]["final"] = self.evaluate(state, "final")
    self.writer.close()
    self.checkpointer.close()
    self.final_state = state
    if jax.process_index() == 0:
      print(self.evaluator.table(info["evals"]), flush=True)
      self.evaluator.write_plots(self.workdir, info["evals"])
    return info["evals"]

  def save(self, state, done: int, info: dict) -> None:
    """Checkpoint `done` (steps completed): state, the iterator of the
    phase that continues, the reference policy and the run info; the
    metrics of every step up to it are written first."""
    self.flush_metrics()
    nxt = self.phase_at(min(done, self.total_steps - 1))
    iterator = self._iterators.get(nxt.name)
    info = dict(
      info,
      iterator_phase=nxt.name if iterator is not None else None,
      has_ref=self.ref_params is not None,
      model=self.config.model.to_dict(),
    )
    self.checkpointer.save(done, state, iterator, info, self.ref_params)


@dataclasses.dataclass
class _PendingMetrics:
  """A dispatched step whose metrics are not read yet."""

  step: int
  phase: str
  metrics: dict
  dispatched: float  # perf_counter when its update was dispatched
  settled: bool = False


def _entered_rl(info: dict) -> bool:
  return bool(info.get("entered_rl")) or "before_rl" in info["evals"]


def _check_init_from(path: str) -> None:
  if not epath.Path(checkpoint.absolute(path)).exists():
    raise MissingInputError(
      f"--config.init_from={path}: no such directory; give an HF "
      "directory or a run's workdir / checkpoints directory"
    )
