"""An RL step up to the update: sample, score the completions, build the batch.

Shapes: P prompts, G samples per prompt, B = P * G completions, T prompt
tokens, C completion tokens, L = T + C, K steps of a completion (its true
count), K_pad step slots of a batch (`step_slots`: its largest K rounded up
to a multiple of STEP_SLOTS; storage only).

`sample` returns the completions as device arrays: their full sequences
(prompt + completion, masks, M-RoPE positions, built on the device from
the sampler's output: `sampler.full_sequence`) and the sampler's
log-probs, split over the mesh like the update; only the sampled token ids
and lengths come back to the host. There they are decoded to text, split
into steps (exact token spans from `rl.steps`), rewarded (`rl.rewards`)
and labelled by the process-reward source (`rl.process`): host work on
text only. `update_batch` adds the step-value head's labels to the device
sequences and `advantage_inputs` gathers what the advantages are computed
from (reward components, step ids and labels, true step counts);
`train/steps.py` `prepare_update` then computes the per-token advantages
(`rl.advantages`, the algorithm picked by name) and the reference
log-probs on the device, in one jitted call. Steps are never merged:
rewards, labels and the MRPO penalty schedule all see the true K; the
update batch carries per-token step ids and labels, and only the
step-label slots (K_pad) have a step axis.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from stepjax import image_slots, rows, sequences
from stepjax.rl import advantages, failures, losses, process, rewards, steps
from stepjax.sampling import sampler
from stepjax.train import batches

STEP_SLOTS = 16  # step-indexed arrays are sized to a multiple of this


def step_slots(max_steps: int) -> int:
  """K_pad for a batch whose largest K is `max_steps`: rounded up to a
  multiple of STEP_SLOTS (at least one multiple), so few shapes occur."""
  return STEP_SLOTS * max(1, -(-int(max_steps) // STEP_SLOTS))


@dataclasses.dataclass
class Scored:
  """Everything learned from one batch of completions (host numpy).

  texts: B decoded completions; step_texts: B lists of K step strings.
  step_id_BxC, num_steps_B (true K), step_valid_BxK (K_pad slots),
    step_valid_BxC (the label of each token's step, 0 outside steps),
    has_labels_B: step layout and process labels; rewards:
    `rl.rewards.Rewards`; labels: per-completion labels.
  step_shaped_BxK: {0,1}[B, K_pad] the labels that reshape their step's
    advantages (`process.shaping_mask`); None: every label does.
  """

  texts: list[str]
  step_texts: list[list[str]]
  step_id_BxC: np.ndarray
  num_steps_B: np.ndarray
  step_valid_BxK: np.ndarray
  step_valid_BxC: np.ndarray
  has_labels_B: np.ndarray
  labels: list[process.StepLabels]
  rewards: rewards.Rewards
  correct_B: np.ndarray
  step_shaped_BxK: np.ndarray | None = None


@flax.struct.dataclass
class Samples:
  """G completions per prompt of this process's B = P * G rows (row p * G
  + g), from `sample`.

  seq: their full sequences and the P prompts' image slots
    (`sequences.SequenceBatch`), device arrays on the policy's mesh.
  old_logp_BxL: float32 the sampler's log-prob of each completion token at
    its column (0 on the T prompt columns), on the mesh.
  tokens_BxR / lengths_B: host numpy copies of the sampled ids (pad after
    a row's stop) and generated lengths (stop included): the text work's.
  seq and old_logp_BxL are None when sampled with `build_sequences=False`.
  """

  seq: sequences.SequenceBatch | None
  old_logp_BxL: jax.Array | None
  tokens_BxR: np.ndarray
  lengths_B: np.ndarray


def generate(*args, **kwargs) -> sampler.SampleOutput:
  """G sampled completions per prompt of a pipeline batch as host numpy
  (this process's rows): `generate_on_device` (the same arguments), its
  output copied back."""
  _, out, num = generate_on_device(*args, **kwargs)
  return _host_rows(out, kwargs.get("mesh"), num * kwargs["group_size"])


def generate_on_device(
  graphs: Any,
  tok_info: Any,
  sampling_config: Any,
  params: Any,
  batch: dict[str, Any],
  rng: Any,
  *,
  group_size: int,
  temperature: float,
  mesh: Any = None,
) -> tuple[sampler.PromptBatch, sampler.SampleOutput, int]:
  """(prompt, out, P): G sampled completions per prompt of a pipeline
  batch, with `sampling.*` limits and the tokenizer's stop ids; the
  sampler's inputs and output as device arrays, and this process's P real
  prompts.

  With a `mesh`, `batch` holds this process's prompts: they are split over
  the mesh's batch axes (data, fsdp), each device decodes its own rows (and
  holds its prompts' image slots). Prompts are padded (the last one
  repeated with its images) up to a multiple of this process's row shards:
  each process's first P prompts (and their P * G rows) are its own; with
  no padding the samples equal an unsplit run's.
  """
  prompt = sampler.prepare_inputs(batch, graphs.cfg)
  num = prompt.prompt_ids_PxT.shape[0]
  if mesh is not None:
    prompt = _pad_rows(prompt, rows.local_shards(mesh))
    # Numbered over all processes' prompts, then split by row.
    prompt = rows.place(image_slots.global_numbering(prompt, mesh), mesh)
  out = sampler.generate(
    graphs.policy,
    params,
    prompt,
    rng,
    group_size=group_size,
    max_new_tokens=sampling_config.max_new_tokens,
    temperature=temperature,
    top_k=sampling_config.top_k,
    top_p=sampling_config.top_p,
    eos_ids=tok_info.stop_ids,
    pad_id=tok_info.pad_id,
    mesh=mesh,
  )
  return prompt, out, num


def _host_rows(out: Any, mesh: Any, num_rows: int) -> Any:
  """This process's first `num_rows` rows of `out`, as host numpy."""
  out = jax.device_get(out) if mesh is None else rows.local(out, mesh)
  return jax.tree.map(lambda x: x[:num_rows], out)


def sample(
  policy: Any,
  batch: dict[str, Any],
  rng: Any,
  sampling_config: Any,
  *,
  group_size: int,
  temperature: float,
  build_sequences: bool = True,
) -> Samples:
  """G completions per prompt of this process's pipeline `batch` from a
  `train.policy.Policy` (its graphs, params, stop ids and mesh).

  Each device decodes its own rows and each row's randomness depends only
  on its global index (`generate_on_device`). The full sequences the update
  reads are built from the sampler's output on the device, in one jitted
  call (`samples_of`); only token ids and lengths are copied to the host.
  `build_sequences=False` skips them (evaluation decodes text and trains
  nothing).
  """
  prompt, out, num = generate_on_device(
    policy.graphs,
    policy.tok_info,
    sampling_config,
    policy.params,
    {k: batch[k] for k in PROMPT_KEYS if k in batch},
    rng,
    group_size=group_size,
    temperature=temperature,
    mesh=policy.mesh,
  )
  if not build_sequences:
    host = _host_rows(out, policy.mesh, num * group_size)
    return Samples(None, None, host.tokens_BxR, host.lengths_B)
  return samples_of(
    prompt, out, group_size=group_size, num_prompts=num, mesh=policy.mesh
  )


def samples_of(
  prompt: sampler.PromptBatch,
  out: sampler.SampleOutput,
  *,
  group_size: int,
  num_prompts: int | None = None,
  mesh: Any = None,
) -> Samples:
  """`Samples` of the sampler's device output: each process's first
  `num_prompts` prompts of `prompt` (by default all: no padding) and
  their G rows each, their sequences built on the device
  (`sampler.full_sequence`) and split over `mesh` like an update (the
  image slots replicated)."""
  padded = prompt.prompt_ids_PxT.shape[0] // jax.process_count()
  num = padded if num_prompts is None else int(num_prompts)
  keep_Q = None
  if num != padded:  # the padding prompts' rows are dropped on the device
    starts = np.arange(jax.process_count()) * padded
    keep_Q = tuple((starts[:, None] + np.arange(num)[None]).ravel().tolist())
  built = _samples_jit(
    prompt, out, group_size=int(group_size), keep_Q=keep_Q, mesh=mesh
  )
  host = _host_rows(
    {"tokens_BxR": built.tokens_BxR, "lengths_B": built.lengths_B},
    mesh,
    num * group_size,
  )
  return built.replace(**host)


@functools.partial(jax.jit, static_argnames=("group_size", "keep_Q", "mesh"))
def _samples_jit(prompt, out, *, group_size: int, keep_Q, mesh):
  """`samples_of` on the device; keep_Q: the global prompts kept (a static
  tuple), None for all."""
  if keep_Q is not None:
    num = prompt.prompt_ids_PxT.shape[0]
    prompt, out = image_slots.take_prompts(
      (prompt, out), np.asarray(keep_Q), num, group_size, xp=jnp
    )
  seq = sampler.full_sequence(prompt, out, group_size)
  t = prompt.prompt_ids_PxT.shape[1]
  b = out.logp_BxR.shape[0]
  old_logp_BxL = jnp.concatenate(
    [jnp.zeros((b, t), jnp.float32), out.logp_BxR.astype(jnp.float32)], axis=1
  )
  return rows.constrain(
    Samples(seq, old_logp_BxL, out.tokens_BxR, out.lengths_B), mesh
  )


# The pipeline batch's keys the sampler reads.
PROMPT_KEYS = (
  "prompt_ids_BxT",
  "prompt_mask_BxT",
  "pixels_IxNxP",
  "patch_mask_IxN",
  "grid_thw_Ix3",
  "image_prompt_I",
)


def _pad_rows(prompt: sampler.PromptBatch, multiple: int):
  """The prompts with the last one (and its image slots) repeated up to a
  multiple of `multiple`."""
  num = prompt.prompt_ids_PxT.shape[0]
  extra = -num % multiple
  if not extra:
    return prompt
  take = np.concatenate([np.arange(num), np.full(extra, num - 1)])
  return image_slots.take_prompts(prompt, take, num)


def step_layout(
  tokens_BxC: np.ndarray, lengths_B: np.ndarray, tokenizer, think_tag: str
) -> steps.StepBatch:
  """Exact step spans of sampled completions (pads carry step id -1)."""
  return steps.batch_step_ids(tokens_BxC, lengths_B, tokenizer, think_tag)


def step_requests(
  step_texts: Sequence[Sequence[str]],
  examples: Sequence[dict[str, Any]],
  group_size: int,
  value_logits_BxK: np.ndarray | None = None,
) -> list[process.StepRequest]:
  """One request per completion (B lists of step texts, row p * G + g);
  `examples` holds the P prompts' records."""
  requests = []
  for i, texts in enumerate(step_texts):
    ex = examples[i // group_size]
    requests.append(
      process.StepRequest(
        record_id=ex["id"],
        question=ex["question"],
        reference=ex["answer"],
        step_texts=tuple(texts),
        rationale=ex.get("rationale", ""),
        image=ex.get("image"),
        meta=ex.get("meta", {}),
        value_logits=(
          None
          if value_logits_BxK is None
          else value_logits_BxK[i, : len(texts)]
        ),
      )
    )
  return requests


def score(
  tokens_BxC: np.ndarray,
  lengths_B: np.ndarray,
  examples: Sequence[dict[str, Any]],
  *,
  tokenizer: Any,
  source: process.ProcessSource,
  config: Any,
  value_logits_BxC: np.ndarray | None = None,
  bertscore: rewards.BertScorer | None = None,
  layout: steps.StepBatch | None = None,
) -> Scored:
  """Rewards and step labels of B = P * G sampled completions.

  Args:
    tokens_BxC: int[B, C] sampled ids, padded after each row's length.
    lengths_B: int[B] generated tokens per row (eos included).
    examples: P dicts with id, question, answer, rationale, meta, image.
    tokenizer: the policy's tokenizer.
    source: the process-reward source (`rl.process_source`).
    config: the job config (rewards.*, rl.*, sampling.group_size).
    value_logits_BxC: float[B, C] the step-value head's logit at every
      completion token, needed by the value_head and hybrid sources (each
      step's logit is read at its last token).
    bertscore: the answer reward's BERTScore scorer
      (`components.answer_scorer`), or None.
    layout: `step_layout` of these completions when the caller has it
      (the value head read it), else computed here.
  """
  g = config.sampling.group_size
  think = config.tokenizer.think_tag
  if layout is None:
    layout = step_layout(tokens_BxC, lengths_B, tokenizer, think)
  k_pad = step_slots(layout.max_steps)
  value_logits = None
  if value_logits_BxC is not None:
    value_logits = np.asarray(
      losses.step_logits(
        jnp.asarray(value_logits_BxC), jnp.asarray(layout.step_id_BxT), k_pad
      )
    )
  requests = step_requests(layout.step_texts, examples, g, value_logits)
  labels = source.label_steps(requests)
  valid_BxK, has_B, _ = process.pack_labels(labels, k_pad)
  shaped_BxK = process.shaping_mask(
    labels, k_pad, config.rl.get("value_min_confidence", 0.0)
  )
  refs = [examples[i // g]["answer"] for i in range(len(layout.texts))]
  r = config.rewards
  scored_rewards = rewards.compute_rewards(
    layout.texts,
    refs,
    layout.num_steps_B,
    [None if lab.skipped else lab.labels for lab in labels],
    answer_weight=r.answer_weight,
    process_weight=r.process_weight,
    length_weight=r.length_weight,
    format_weight=r.format_weight,
    k_min=r.k_min,
    k_max=r.k_max,
    think_tag=think,
    bertscore=bertscore,
  )
  correct = np.array(
    [
      rewards.answers_match(rewards.extract_answer(t), ref)
      for t, ref in zip(layout.texts, refs)
    ]
  )
  return Scored(
    texts=layout.texts,
    step_texts=layout.step_texts,
    step_id_BxC=layout.step_id_BxT,
    num_steps_B=layout.num_steps_B,
    step_valid_BxK=valid_BxK,
    step_valid_BxC=process.token_labels(layout.step_id_BxT, valid_BxK),
    has_labels_B=has_B,
    labels=labels,
    rewards=scored_rewards,
    correct_B=correct,
    step_shaped_BxK=shaped_BxK,
  )


def update_batch(
  samples: Samples, scored: Scored, label_mask_B: np.ndarray
) -> batches.UpdateBatch:
  """The update batch of scored completions (advantages and reference
  log-probs still to come: `steps.prepare_update`).

  Args:
    samples: `sample`'s completions (their sequences on the device).
    scored: `score` of the same completions.
    label_mask_B: {0,1}[B] completions whose step labels train the value
      head.

  Returns:
    An `UpdateBatch` of `samples`' sequences and sampler log-probs, with
    the step-value head's labels (step_id_BxL, step_valid_BxL: completion
    token c at column T + c, the T prompt columns hold step id -1 and
    label 0; host numpy, placed with the batch).
  """
  b, c = scored.step_id_BxC.shape
  if samples.seq is None:
    raise ValueError("update_batch needs samples with sequences=True")
  if samples.tokens_BxR.shape != (b, c):
    raise ValueError(
      f"{samples.tokens_BxR.shape[0]} samples of "
      f"{samples.tokens_BxR.shape[1]} tokens scored as {b} of {c}"
    )
  if scored.step_valid_BxK.shape[1] < scored.num_steps_B.max(initial=0):
    raise ValueError(
      f"{scored.step_valid_BxK.shape[1]} step slots for completions of up "
      f"to {scored.num_steps_B.max()} steps (size them with step_slots)"
    )
  labels = batches.pad_completion_arrays(
    {
      "step_id_BxL": scored.step_id_BxC.astype(np.int32),
      "step_valid_BxL": scored.step_valid_BxC.astype(np.int32),
    },
    samples.seq.ids_BxL.shape[1] - c,
  )
  return batches.UpdateBatch(
    seq=samples.seq,
    old_logp_BxL=samples.old_logp_BxL,
    value_labels=batches.ValueLabels(
      label_mask_B=np.asarray(label_mask_B, np.int32), **labels
    ),
  )


def advantage_inputs(scored: Scored) -> advantages.AdvantageInputs:
  """What `steps.prepare_update` computes the advantages of scored
  completions from (host numpy; rewards_BxC in `reward_weights`' order,
  step ids of the completion tokens; a step whose label does not reshape
  it, `Scored.step_shaped_BxK`, is labelled -1)."""
  rewards_BxC, _ = scored.rewards.matrix()
  valid_BxK = np.asarray(scored.step_valid_BxK, np.int32)
  if scored.step_shaped_BxK is not None:
    valid_BxK = np.where(scored.step_shaped_BxK > 0, valid_BxK, -1)
  return advantages.AdvantageInputs(
    rewards_BxC=np.asarray(rewards_BxC),
    answer_reward_B=np.asarray(scored.rewards.components["answer"], np.float32),
    step_id_BxT=scored.step_id_BxC.astype(np.int32),
    num_steps_B=np.asarray(scored.num_steps_B, np.int32),
    step_valid_BxK=valid_BxK.astype(np.int32),
    has_labels_B=np.asarray(scored.has_labels_B, np.int32),
  )


def reward_weights(scored: Scored) -> tuple[float, ...]:
  """The weights of `update_batch`'s rewards_BxC columns (static)."""
  _, weights_C = scored.rewards.matrix()
  return tuple(float(w) for w in weights_C)


def metrics(
  scored: Scored, samples: Any, group_size: int | None = None
) -> dict[str, float]:
  """Scalars logged per RL step from the scored completions.

  With `group_size`, also `zero_std_groups`: the share of prompts whose G
  completions all got the same total reward (no learning signal), and
  `answer_zero_std_groups`, the same for the answer reward alone.
  """
  comps = scored.rewards.components
  # Step statistics over the labelled completions only (accuracy is over
  # all of them, below).
  labels = [lab.labels for lab in scored.labels if not lab.skipped]
  stats = failures.analyze(labels)
  m = {
    "reward": float(np.mean(scored.rewards.total)),
    "accuracy": float(np.mean(scored.correct_B)),
    "step_validity": stats.step_validity,
    "num_steps": float(np.mean(scored.num_steps_B)),
    "completion_length": float(np.mean(samples.lengths_B)),
  }
  for name, value in comps.items():
    m[f"reward_{name}"] = float(np.mean(value))
  f1 = scored.rewards.bertscore_f1
  if f1 is not None and np.isfinite(f1).any():
    # Over the answers that did not match (the ones BERTScore scored).
    m["answer_bertscore_f1"] = float(np.mean(f1[np.isfinite(f1)]))
  for b in ("early", "mid", "late"):
    m[f"ffp_{b}"] = stats.ffp_shares[b]
  if group_size:
    m["zero_std_groups"] = _flat_group_share(scored.rewards.total, group_size)
    m["answer_zero_std_groups"] = _flat_group_share(comps["answer"], group_size)
  return m


def label_errors(
  scored: Scored,
  examples: Sequence[dict[str, Any]],
  group_size: int,
  truth: process.ProcessSource,
) -> dict[str, float]:
  """`process.label_error_rates` of the labels `scored` was given, against
  `truth`'s labels of the same completions (with the rates over the labels
  that reshaped their steps, and the share that did not)."""
  requests = step_requests(scored.step_texts, examples, group_size)
  return process.label_error_rates(
    scored.labels, truth.label_steps(requests), scored.step_shaped_BxK
  )


def _flat_group_share(values_B: np.ndarray, group_size: int) -> float:
  """Share of groups of `group_size` consecutive values that are all equal."""
  v_NxG = np.asarray(values_B, np.float64).reshape(-1, group_size)
  flat = np.ptp(v_NxG, axis=1) <= 1e-9
  return float(np.mean(flat)) if flat.size else 0.0
