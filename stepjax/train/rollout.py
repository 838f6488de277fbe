"""Host side of an RL step: score sampled completions and build the update.

Shapes: P prompts, G samples per prompt, B = P * G completions, T prompt
tokens, C completion tokens, L = T + C, K steps of a completion (its true
count), K_pad step slots of a batch (`step_slots`: its largest K rounded up
to a multiple of STEP_SLOTS; storage only).

Sampled token ids are decoded to text, split into steps (exact token spans
from `rl.steps`), rewarded (`rl.rewards`), labelled by the process-reward
source (`rl.process`): host work on text only. `update_batch` lays what
the advantages are computed from (reward components, step ids, labels,
true step counts) over the full sequence; `train/steps.py`
`prepare_update` then computes the per-token advantages (`rl.advantages`,
the algorithm picked by name) and the reference log-probs on the device,
in one jitted call. Steps are never merged: rewards, labels and the MRPO
penalty schedule all see the true K; the update batch carries per-token
step ids and labels, and only the step-label slots (K_pad) have a step
axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepjax import image_slots, rows
from stepjax.rl import failures, losses, process, rewards, steps
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


def generate(
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
) -> Any:
  """G sampled completions per prompt of a pipeline batch (host numpy
  `SampleOutput`), with `sampling.*` limits and the tokenizer's stop ids.

  With a `mesh`, `batch` holds this process's prompts: they are split over
  the mesh's batch axes (data, fsdp), each device decodes its own rows (and
  holds its prompts' image slots) and this process gets back its own
  completions. Prompts are padded (the last one repeated with its images,
  its completions dropped) up to a multiple of this process's row shards;
  with no padding the samples equal an unsplit run's.
  """
  prompt = sampler.prepare_inputs(batch, graphs.cfg)
  num = prompt.prompt_ids_PxT.shape[0]
  if mesh is not None:
    prompt = _pad_rows(prompt, rows.local_shards(mesh))
    if prompt.image_prompt_I is not None:  # numbered over all processes
      prompt = prompt.replace(
        image_prompt_I=image_slots.for_process(
          prompt.image_prompt_I, prompt.prompt_ids_PxT.shape[0]
        )
      )
    prompt = rows.place(prompt, mesh)
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
  if mesh is None:
    return jax.device_get(out)
  out = rows.local(out, mesh)
  return jax.tree.map(lambda x: x[: num * group_size], out)


def sample(
  policy: Any,
  batch: dict[str, Any],
  rng: Any,
  sampling_config: Any,
  *,
  group_size: int,
  temperature: float,
) -> Any:
  """G completions per prompt of a pipeline `batch` from a
  `train.policy.Policy` (host numpy `SampleOutput`): `generate` with the
  policy's graphs, params, stop ids and mesh."""
  return generate(
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
  step_batch: steps.StepBatch,
  examples: Sequence[dict[str, Any]],
  group_size: int,
  value_logits_BxK: np.ndarray | None = None,
) -> list[process.StepRequest]:
  """One request per completion; `examples` holds the P prompts' records."""
  requests = []
  for i, texts in enumerate(step_batch.step_texts):
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
  """
  g = config.sampling.group_size
  think = config.tokenizer.think_tag
  layout = step_layout(tokens_BxC, lengths_B, tokenizer, think)
  k_pad = step_slots(layout.max_steps)
  value_logits = None
  if value_logits_BxC is not None:
    value_logits = np.asarray(
      losses.step_logits(
        jnp.asarray(value_logits_BxC), jnp.asarray(layout.step_id_BxT), k_pad
      )
    )
  requests = step_requests(layout, examples, g, value_logits)
  labels = source.label_steps(requests)
  valid_BxK, has_B, _ = process.pack_labels(labels, k_pad)
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
  )


def update_batch(
  seq: dict[str, Any],
  scored: Scored,
  old_logp_BxC: np.ndarray,
  label_mask_B: np.ndarray,
) -> dict[str, Any]:
  """The update batch (`train/steps.py` layout) of scored completions.

  Args:
    seq: the full sequences of the B rows (`batches.sequences`: the prompt
      left-padded to T columns, then the C completion columns) plus the
      vision inputs (`batches.vision_inputs`).
    scored: `score` of the same completions.
    old_logp_BxC: float[B, C] the sampler's log-prob of each completion
      token.
    label_mask_B: {0,1}[B] completions whose step labels train the value
      head.

  Returns:
    `seq`'s arrays plus old_logp_BxL, step_id_BxL, step_valid_BxL
    (completion token c at column T + c; the T prompt columns hold 0, step
    id -1), label_mask_B, and what `steps.prepare_update` computes the
    advantages from: rewards_BxC (reward components, `reward_weights`'
    order), answer_reward_B, num_steps_B (true K), step_valid_BxK,
    has_labels_B.
  """
  b, c = scored.step_id_BxC.shape
  length = seq["ids_BxL"].shape[1]
  if seq["ids_BxL"].shape[0] != b or length < c:
    raise ValueError(
      f"sequences of shape {seq['ids_BxL'].shape} cannot hold {b} "
      f"completions of {c} tokens"
    )
  if scored.step_valid_BxK.shape[1] < scored.num_steps_B.max(initial=0):
    raise ValueError(
      f"{scored.step_valid_BxK.shape[1]} step slots for completions of up "
      f"to {scored.num_steps_B.max()} steps (size them with step_slots)"
    )
  update = dict(seq)
  update.update(
    batches.pad_completion_arrays(
      {
        "old_logp_BxL": np.asarray(old_logp_BxC, np.float32),
        "step_id_BxL": scored.step_id_BxC.astype(np.int32),
        "step_valid_BxL": scored.step_valid_BxC.astype(np.int32),
      },
      length - c,
    )
  )
  update["label_mask_B"] = np.asarray(label_mask_B, np.int32)
  rewards_BxC, _ = scored.rewards.matrix()
  update["rewards_BxC"] = rewards_BxC
  update["answer_reward_B"] = np.asarray(
    scored.rewards.components["answer"], np.float32
  )
  update["num_steps_B"] = np.asarray(scored.num_steps_B, np.int32)
  update["step_valid_BxK"] = np.asarray(scored.step_valid_BxK, np.int32)
  update["has_labels_B"] = np.asarray(scored.has_labels_B, np.int32)
  return update


# What `update_batch` adds for `steps.prepare_update` only.
ADVANTAGE_INPUT_KEYS = (
  "rewards_BxC",
  "answer_reward_B",
  "num_steps_B",
  "step_valid_BxK",
  "has_labels_B",
)


def reward_weights(scored: Scored) -> tuple[float, ...]:
  """The weights of `update_batch`'s rewards_BxC columns (static)."""
  _, weights_C = scored.rewards.matrix()
  return tuple(float(w) for w in weights_C)


def metrics(
  scored: Scored, out: Any, group_size: int | None = None
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
    "completion_length": float(np.mean(out.lengths_B)),
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


def _flat_group_share(values_B: np.ndarray, group_size: int) -> float:
  """Share of groups of `group_size` consecutive values that are all equal."""
  v_NxG = np.asarray(values_B, np.float64).reshape(-1, group_size)
  flat = np.ptp(v_NxG, axis=1) <= 1e-9
  return float(np.mean(flat)) if flat.size else 0.0
