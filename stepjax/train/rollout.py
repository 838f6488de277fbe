"""Host side of an RL step: score sampled completions and build the update.

Shapes: P prompts, G samples per prompt, B = P * G completions, T prompt
tokens, C completion tokens, L = T + C, K = K_pad step slots.

Sampled token ids are decoded to text, split into steps (exact token spans
from `rl.steps`), rewarded (`rl.rewards`), labelled by the process-reward
source (`rl.process`), and turned into per-token advantages (`rl.advantages`)
laid out over the full sequence so the update can use one array per
quantity (see `train/steps.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepjax.eval import metrics as eval_metrics
from stepjax.rl import advantages, process, rewards, steps
from stepjax.sampling import sampler

K_PAD = 16  # step slots per completion; more steps merge into the last


@dataclasses.dataclass
class Scored:
  """Everything learned from one batch of completions (host numpy).

  texts: B decoded completions; step_texts: B lists of step strings.
  step_id_BxC, num_steps_B, step_valid_BxK, has_labels_B: step layout and
    process labels; rewards: `rl.rewards.Rewards`; adv_BxC: per-token
    advantages over the completion tokens; labels: per-completion labels.
  """

  texts: list[str]
  step_texts: list[list[str]]
  step_id_BxC: np.ndarray
  num_steps_B: np.ndarray
  step_valid_BxK: np.ndarray
  has_labels_B: np.ndarray
  labels: list[process.StepLabels]
  rewards: rewards.Rewards
  adv_B: np.ndarray
  adv_BxC: np.ndarray
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
) -> Any:
  """G sampled completions per prompt of a pipeline batch (host numpy
  `SampleOutput`), with `sampling.*` limits and the tokenizer's stop id."""
  prompt = sampler.prepare_inputs(batch, graphs.cfg)
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
    eos_ids=(tok_info.eos_id,),
    pad_id=tok_info.pad_id,
  )
  return jax.device_get(out)


def step_layout(
  tokens_BxC: np.ndarray, lengths_B: np.ndarray, tokenizer, think_tag: str
) -> steps.StepBatch:
  """Exact step spans of sampled completions (pads carry step id -1)."""
  return steps.batch_step_ids(
    tokens_BxC, lengths_B, tokenizer, think_tag, max_steps=K_PAD
  )


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
  value_logits_fn=None,
) -> Scored:
  """Rewards, labels and advantages of B = P * G sampled completions.

  Args:
    tokens_BxC: int[B, C] sampled ids, padded after each row's length.
    lengths_B: int[B] generated tokens per row (eos included).
    examples: P dicts with id, question, answer, rationale, meta, image.
    tokenizer: the policy's tokenizer.
    source: the process-reward source (`rl.process_source`).
    config: the job config (rewards.*, rl.*, sampling.group_size).
    value_logits_fn: (step_id_BxC) -> float[B, K_PAD] step-value logits,
      needed by the value_head and hybrid sources.
  """
  g = config.sampling.group_size
  think = config.tokenizer.think_tag
  layout = step_layout(tokens_BxC, lengths_B, tokenizer, think)
  value_logits = None
  if value_logits_fn is not None:
    value_logits = np.asarray(value_logits_fn(layout.step_id_BxT))
  requests = step_requests(layout, examples, g, value_logits)
  labels = source.label_steps(requests)
  valid_BxK, has_B, _ = process.pack_labels(labels, K_PAD)
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
  )
  adv_B, adv_BxC = token_advantages(
    scored_rewards, layout, valid_BxK, has_B, config
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
    has_labels_B=has_B,
    labels=labels,
    rewards=scored_rewards,
    adv_B=adv_B,
    adv_BxC=adv_BxC,
    correct_B=correct,
  )


def token_advantages(
  scored_rewards: rewards.Rewards,
  layout: steps.StepBatch,
  valid_BxK: np.ndarray,
  has_B: np.ndarray,
  config: Any,
) -> tuple[np.ndarray, np.ndarray]:
  """(adv_B, adv_BxC) by `rl.algorithm`: grpo, gdpo or mrpo shaping."""
  rl = config.rl
  g = config.sampling.group_size
  rewards_BxC, weights_C = scored_rewards.matrix()
  estimator = advantages.get_estimator(rl.algorithm)
  adv_B = estimator(
    jnp.asarray(rewards_BxC),
    g,
    jnp.asarray(weights_C),
    scale_by_std=rl.scale_by_std,
  )
  num_tokens = layout.step_id_BxT.shape[1]
  if rl.algorithm == "mrpo":
    adv_BxC = advantages.mrpo_shape(
      adv_B,
      jnp.asarray(scored_rewards.components["answer"]),
      jnp.asarray(layout.step_id_BxT),
      jnp.asarray(layout.num_steps_B),
      jnp.asarray(valid_BxK),
      tau=rl.tau,
      penalty=rl.penalty,
      has_labels_B=jnp.asarray(has_B),
    )
  else:
    adv_BxC = advantages.broadcast(adv_B, num_tokens)
  return np.asarray(adv_B), np.asarray(adv_BxC)


def metrics(scored: Scored, out: Any) -> dict[str, float]:
  """Scalars logged per RL step from the scored completions."""
  comps = scored.rewards.components
  labels = [lab.labels for lab in scored.labels if not lab.skipped]
  stats = eval_metrics.analyze(labels, list(scored.correct_B))
  m = {
    "reward": float(np.mean(scored.rewards.total)),
    "accuracy": float(np.mean(scored.correct_B)),
    "step_validity": stats.step_validity,
    "num_steps": float(np.mean(scored.num_steps_B)),
    "completion_length": float(np.mean(out.lengths_B)),
    "adv_abs_mean": float(np.mean(np.abs(scored.adv_B))),
  }
  for name, value in comps.items():
    m[f"reward_{name}"] = float(np.mean(value))
  for b in ("early", "mid", "late"):
    m[f"ffp_{b}"] = stats.ffp_shares[b]
  return m
