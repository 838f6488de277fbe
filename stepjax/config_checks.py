"""Semantic checks on a job config, run before any work starts.

`ml_collections` already rejects unknown keys and wrongly typed overrides
(the config is locked and typed); these checks catch values that parse but
make no sense together, naming the flag to change.
"""

from __future__ import annotations

import difflib
import math

import ml_collections

from stepjax import config_utils
from stepjax.errors import UserError
from stepjax.models import config as model_config
from stepjax.rl import process

# eval.answer_judge and eval.answer_judge_fallback (eval/answer_judge.py).
ANSWER_JUDGE_MODES = ("exact", "judge")
ANSWER_JUDGE_FALLBACKS = ("mismatch", "exact", "skip")

ALGORITHMS = ("grpo", "gdpo", "mrpo")
PROCESS_SOURCES = ("verifier", "judge", "value_head", "hybrid")
LOSS_AGGREGATIONS = ("seq_mean", "token_mean", "constant")
PENALTIES = ("exp", "exp_rounded", "linear")
VALID_STEP_RULES = ("abs", "keep")


class ConfigError(UserError, ValueError):
  """A config value that cannot work; the message names the flag."""


def _require(ok: bool, flag: str, message: str) -> None:
  if not ok:
    raise ConfigError(f"--config.{flag}: {message}")


def _one_of(value, choices, flag: str) -> None:
  _require(value in choices, flag, f"got {value!r}, expected one of {choices}")


def check(config: ml_collections.ConfigDict, training: bool = True) -> None:
  """Raises ConfigError for the first inconsistent setting found.

  training=False (eval, generate, export, plan) skips what only the RL
  phase uses: the process-label source and the judge endpoint.
  """
  rl, data, sampling = config.rl, config.data, config.sampling
  _one_of(rl.algorithm, ALGORITHMS, "rl.algorithm")
  _one_of(rl.process_source, PROCESS_SOURCES, "rl.process_source")
  _one_of(rl.loss_aggregation, LOSS_AGGREGATIONS, "rl.loss_aggregation")
  _one_of(rl.penalty, PENALTIES, "rl.penalty")
  _one_of(rl.valid_step_advantage, VALID_STEP_RULES, "rl.valid_step_advantage")
  _one_of(
    rl.get("hybrid_select", "random"),
    process.HYBRID_SELECTIONS,
    "rl.hybrid_select",
  )
  _require(
    sampling.group_size >= 2,
    "sampling.group_size",
    f"is {sampling.group_size}; group-relative advantages ({rl.algorithm}) "
    "need at least 2 completions per prompt",
  )
  _require(0.0 <= rl.tau <= 1.0, "rl.tau", f"is {rl.tau}; must be in [0, 1]")
  _require(rl.beta >= 0.0, "rl.beta", f"is {rl.beta}; must be >= 0")
  for name in ("eps_low", "eps_high"):
    value = rl[name]
    _require(0.0 <= value < 1.0, f"rl.{name}", f"is {value}; must be in [0, 1)")
  _require(rl.num_iterations >= 1, "rl.num_iterations", "must be >= 1")
  _require(sampling.temperature >= 0.0, "sampling.temperature", "must be >= 0")
  _require(0.0 < sampling.top_p <= 1.0, "sampling.top_p", "must be in (0, 1]")
  _require(sampling.top_k >= 0, "sampling.top_k", "must be >= 0 (0 = off)")
  _require(sampling.max_new_tokens >= 1, "sampling.max_new_tokens", ">= 1")
  _one_of(data.on_bad_record, ("fail", "skip"), "data.on_bad_record")
  for name in ("token_buckets", "patch_buckets"):
    buckets = tuple(data[name])
    _require(
      len(buckets) > 0 and all(int(b) > 0 for b in buckets),
      f"data.{name}",
      f"is {buckets}; give one or more positive lengths",
    )
    _require(
      list(buckets) == sorted(buckets),
      f"data.{name}",
      f"is {buckets}; list the buckets in increasing order",
    )
  _require(data.batch_size >= 1, "data.batch_size", "must be >= 1")
  max_images = data.get("max_images", 1)
  _require(max_images >= 1, "data.max_images", f"is {max_images}; must be >= 1")
  _require(
    not training or config.sft.grounding_weight <= 0 or max_images == 1,
    "sft.grounding_weight",
    f"is {config.sft.grounding_weight}; the grounding readout reads one "
    f"image per prompt but data.max_images={max_images} (set it to 0)",
  )
  _require(data.eval_batch_size >= 0, "data.eval_batch_size", "must be >= 0")
  _require(
    data.min_pixels <= data.max_pixels,
    "data.min_pixels",
    f"({data.min_pixels}) exceeds data.max_pixels ({data.max_pixels})",
  )
  _require(
    config.tokenizer.think_tag in ("think", "thinking"),
    "tokenizer.think_tag",
    f"is {config.tokenizer.think_tag!r}; expected think or thinking",
  )
  _require(
    config.rewards.k_min <= config.rewards.k_max,
    "rewards.k_min",
    f"({config.rewards.k_min}) exceeds rewards.k_max ({config.rewards.k_max})",
  )
  _check_dataset(data)
  _check_numbers(config)
  _check_eval(config)
  _require(
    not training
    or rl.process_source != "verifier"
    or data.dataset in ("synthmed", "mrpo_json"),
    "rl.process_source",
    f"'verifier' checks SynthMed scenes; data.dataset={data.dataset!r} "
    "has none: use judge, hybrid or value_head",
  )
  _one_of(config.judge.simulate, ("", "verifier"), "judge.simulate")
  _one_of(data.verifier, ("aligned", "truth"), "data.verifier")
  _one_of(
    _get(config, "model.step_value_input", "last"),
    model_config.VALUE_INPUTS,
    "model.step_value_input",
  )
  _one_of(data.eval_verifier, ("aligned", "truth"), "data.eval_verifier")
  for flag in (
    "sft.findings_scans",
    "sft.grounding_weight",
    "sft.vision_pretrain_steps",
  ):
    value = _get(config, flag, 0)
    _require(
      not training or value <= 0 or data.dataset == "synthmed",
      flag,
      f"is {value}; it needs SynthMed scenes and data.dataset="
      f"{data.dataset!r} has none (set it to 0)",
    )
  _require(
    0.0 <= rl.label_noise <= 0.5,
    "rl.label_noise",
    f"is {rl.label_noise}; must be in [0, 0.5]",
  )
  _require(
    config.judge.simulate != "verifier"
    or data.dataset in ("synthmed", "mrpo_json"),
    "judge.simulate",
    f"'verifier' checks SynthMed scenes; data.dataset={data.dataset!r} "
    "has none: set judge.base_url and judge.model for a real judge",
  )
  if (
    training
    and rl.process_source in ("judge", "hybrid")
    and not config.judge.simulate
  ):
    _require(
      bool(config.judge.base_url) and bool(config.judge.model),
      "judge.base_url",
      f"rl.process_source={rl.process_source!r} needs judge.base_url and "
      "judge.model (an OpenAI-compatible chat-completions endpoint)",
    )
  full = rl.get("hybrid_full_judge_steps", 0)
  most = process.max_full_judge_calls(
    rl.hybrid_judge_fraction, config.train.steps
  )
  _require(
    full <= most,
    "rl.hybrid_full_judge_steps",
    f"is {full}: the judge budget (rl.hybrid_judge_fraction="
    f"{rl.hybrid_judge_fraction} of train.steps={config.train.steps}) "
    f"allows at most {most} fully judged steps",
  )
  _require(config.optim.grad_accum >= 1, "optim.grad_accum", "must be >= 1")
  for axis in ("data", "fsdp", "tensor"):
    size = config.mesh[axis]
    _require(
      size == -1 or size >= 1, f"mesh.{axis}", f"is {size}; use -1 or >= 1"
    )
  _require(
    [config.mesh[a] for a in ("data", "fsdp", "tensor")].count(-1) <= 1,
    "mesh",
    "at most one mesh axis may be -1 (the rest of the devices)",
  )


def _check_dataset(data: ml_collections.ConfigDict) -> None:
  from stepjax.data import sources  # the registry of data.dataset names

  known = sources.source_names()
  if data.dataset not in known:
    close = difflib.get_close_matches(data.dataset, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    _require(
      False,
      "data.dataset",
      f"{data.dataset!r} is not a dataset{hint}; known: {known}",
    )


def _check_eval(config: ml_collections.ConfigDict) -> None:
  """The answer judge: a known mode and fallback, and an endpoint when it
  judges. A config without an eval group (a run's config.json from before
  it existed) evaluates by exact match."""
  e = config.get("eval")
  if e is None:
    return
  _one_of(e.answer_judge, ANSWER_JUDGE_MODES, "eval.answer_judge")
  _one_of(
    e.answer_judge_fallback,
    ANSWER_JUDGE_FALLBACKS,
    "eval.answer_judge_fallback",
  )
  _require(
    e.answer_judge != "judge"
    or (bool(config.judge.base_url) and bool(config.judge.model)),
    "judge.base_url",
    "eval.answer_judge='judge' needs judge.base_url and judge.model (an "
    "OpenAI-compatible chat-completions endpoint)",
  )


def _check_numbers(config: ml_collections.ConfigDict) -> None:
  """Counts, rates and sizes: finite and in range, before any work starts."""
  for flag in config_utils.dotted_keys(config):
    value = _get(config, flag)
    if isinstance(value, float):
      _require(math.isfinite(value), flag, f"is {value}; give a finite number")
  positive = (
    "optim.learning_rate",
    "sft.learning_rate",
    "sft.batch_size",
    "sft.vision_pretrain_scans",
    "sft.vision_pretrain_lr",
    "sft.vision_pretrain_eval_scans",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "data.image_size",
    "optim.grad_clip",
    "rl.value_lr_scale",
  )
  for flag in positive:
    value = _get(config, flag, 1)
    _require(value > 0, flag, f"is {value}; must be > 0")
  non_negative = (
    "seed",
    "optim.warmup_steps",
    "optim.weight_decay",
    "sft.steps",
    "sft.findings_scans",
    "sft.grounding_weight",
    "sft.vision_pretrain_steps",
    "train.steps",
    "train.eval_every",
    "rl.hybrid_full_judge_steps",
    "data.num_workers",
    "rewards.k_min",
    "rewards.answer_weight",
    "rewards.process_weight",
    "rewards.length_weight",
    "rewards.format_weight",
    "rl.value_loss_weight",
    "judge.timeout_s",
    "judge.max_retries",
  )
  for flag in non_negative:
    value = _get(config, flag, 0)
    _require(value >= 0, flag, f"is {value}; must be >= 0")
  for flag in ("optim.b1", "optim.b2"):
    value = _get(config, flag)
    _require(0.0 <= value < 1.0, flag, f"is {value}; must be in [0, 1)")
  value = _get(config, "rl.value_min_confidence", 0.0)
  _require(
    0.0 <= value < 1.0,
    "rl.value_min_confidence",
    f"is {value}; must be in [0, 1) (the step-value head's least "
    "confidence, max(p, 1 - p), for its label to shape a step)",
  )
  for flag in (
    "data.difficulty",
    "data.cascade_rate",
    "rl.hybrid_judge_fraction",
  ):
    value = _get(config, flag)
    _require(0.0 <= value <= 1.0, flag, f"is {value}; must be in [0, 1]")
  _require(config.judge.concurrency >= 1, "judge.concurrency", "must be >= 1")
  if config.data.dataset == "synthmed":
    for flag in ("data.num_train", "data.num_eval"):
      value = _get(config, flag)
      _require(value >= 1, flag, f"is {value}; SynthMed needs >= 1 record")


_ABSENT = object()


def _get(config: ml_collections.ConfigDict, flag: str, default=_ABSENT):
  """The value at a dotted key; `default` where the config has no such key
  (a run's config.json written before the key existed), else KeyError."""
  node = config
  for name in flag.split("."):
    if default is not _ABSENT and name not in node:
      return default
    node = node[name]
  return node
