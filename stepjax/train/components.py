"""What a run is built from, by config: data sources, tokenizer, labeller.

Shared by the trainer (`loop.py`) and the `eval` / `generate` commands so
that a split or a process-reward source means the same thing everywhere.
"""

from __future__ import annotations

from typing import Any

from absl import logging

from stepjax.data import sources, synthmed
from stepjax.data import tokenizer as tokenizer_lib
from stepjax.errors import InputError
from stepjax.rl import process, rewards
from stepjax.train import batches, policy

SPLITS = ("train", "eval")
# SynthMed's eval scans come from their own seed stream, never trained on.
SYNTHMED_EVAL_SEED_OFFSET = 10_000
SYNTHMED_FINDINGS_SEED_OFFSET = 30_000


def make_source(config: Any, split: str) -> Any:
  """The records of `split` ("train" or "eval") for `config.data`.

  SynthMed generates them; on-disk datasets read `data.path` (train) and
  `data.eval_path` (eval; falls back to `data.path` for datasets whose
  files hold several splits) with `data.train_split` / `data.eval_split`.
  """
  if split not in SPLITS:
    raise InputError(f"split {split!r}: expected one of {SPLITS}")
  d = config.data
  if d.dataset == "synthmed":
    common = dict(image_size=d.image_size, difficulty=d.difficulty)
    if split == "eval":
      return synthmed.SynthMedSource(
        d.num_eval, config.seed + SYNTHMED_EVAL_SEED_OFFSET, **common
      )
    return synthmed.SynthMedSource(
      d.num_train, config.seed, cascade_rate=d.cascade_rate, **common
    )
  path = d.path if split == "train" else (d.eval_path or d.path)
  if not path:
    raise InputError(
      f"--config.data.dataset={d.dataset!r} reads from disk: set "
      "--config.data.path (and --config.data.eval_path for evaluation)"
    )
  if split == "eval" and d.dataset == "mrpo_json" and not d.eval_path:
    raise InputError(
      "--config.data.dataset=mrpo_json: set --config.data.eval_path to the "
      "evaluation file (evaluating on the training file hides overfitting)"
    )
  kwargs = {"on_bad_record": d.on_bad_record}
  if d.dataset == "mrpo_json" and d.image_root:
    kwargs["image_root"] = d.image_root
  if d.dataset != "mrpo_json":
    kwargs["split"] = d.train_split if split == "train" else d.eval_split
  return sources.make_source(d.dataset, path, **kwargs)


def sft_source(config: Any, train_source: Any) -> Any:
  """What SFT imitates: the training records' SFT targets, plus
  `sft.findings_scans` SynthMed findings reports (scans of their own seed)
  when set."""
  view = batches.SftView(train_source)
  n = int(config.sft.findings_scans)
  if n <= 0:
    return view
  d = config.data  # SynthMed only: config_checks refuses other datasets
  findings = synthmed.FindingsSource(
    n,
    config.seed + SYNTHMED_FINDINGS_SEED_OFFSET,
    image_size=d.image_size,
    difficulty=d.difficulty,
  )
  return sources.ConcatSource([view, findings])


def tokenizer_path(config: Any) -> str:
  """The tokenizer to load: configured, else the HF checkpoint's own, else
  "" (the built-in SynthMed tokenizer)."""
  if config.tokenizer.path:
    return config.tokenizer.path
  if policy.is_hf_dir(config.init_from):
    return config.init_from
  return ""


def generation_config_dir(config: Any) -> str:
  """Where the checkpoint's generation_config.json (its stop ids) is
  looked for: the HF checkpoint `init_from`, else `tokenizer.path`, else
  "" (none: <|im_end|> alone stops a completion)."""
  if policy.is_hf_dir(config.init_from):
    return config.init_from
  return config.tokenizer.path


def load_tokenizer(config: Any) -> tuple[Any, tokenizer_lib.TokenizerInfo]:
  """(tokenizer, its `TokenizerInfo`) of a job: the trainer, eval and
  `stepjax generate` all load it here, so they share prompts and stop
  ids."""
  tok = tokenizer_lib.load_tokenizer(tokenizer_path(config))
  return tok, tokenizer_lib.tokenizer_info(tok, generation_config_dir(config))


def process_source(config: Any) -> process.ProcessSource:
  """The process-reward source named by `rl.process_source`.

  `judge.simulate=verifier` stands the SynthMed verifier in for the LLM
  judge (calls counted, no endpoint); `rl.label_noise` flips that share of
  the verifier's or judge's step labels (a fallible judge, simulated).
  """
  name = config.rl.process_source
  value_head = process.ValueHeadSource(config.rl.value_threshold)
  if name == "value_head":
    return value_head
  if name == "verifier":
    labeler = _verifier(config)
  elif config.judge.simulate == "verifier":
    labeler = process.CountingSource(_verifier(config))
  else:
    labeler = process.JudgeSource(_judge_client(config.judge))
  if config.rl.label_noise > 0:
    labeler = process.NoisySource(
      labeler, config.rl.label_noise, seed=config.seed
    )
  if name in ("verifier", "judge"):
    return labeler
  return process.HybridSource(
    labeler,
    value_head,
    config.rl.hybrid_judge_fraction,
    seed=config.seed,
    full_judge_calls=config.rl.get("hybrid_full_judge_steps", 0),
    total_calls=config.train.steps,
    # The trainer numbers its scoring calls by the global step.
    first_call=config.sft.steps,
    select=config.rl.get("hybrid_select", "random"),
  )


def truth_source(config: Any) -> process.VerifierSource | None:
  """The SynthMed verifier as a yardstick for the labels a value_head or
  hybrid run trains on (`process.label_error_rates`, logged per RL step;
  never counted as judge calls), or None where there is no scene to check
  or the labels are the verifier's own."""
  if config.data.dataset != "synthmed" or config.rl.process_source not in (
    "value_head",
    "hybrid",
  ):
    return None
  return _verifier(config)


def _verifier(config: Any) -> process.VerifierSource:
  """SynthMed's rule verifier (`data.verifier`) as a process source."""
  return process.VerifierSource(synthmed.step_verifier(config.data.verifier))


def answer_scorer(config: Any) -> rewards.BertScorer | None:
  """The answer reward's BERTScore scorer from `rewards.bertscore_model` (a
  local HF encoder directory), or None when the key is empty. Fails with
  an `InputError` when bert-score is not installed or the directory does
  not load; says once which encoder the answer reward uses."""
  model_dir = config.rewards.bertscore_model
  if not model_dir:
    return None
  scorer = rewards.BertScorer(model_dir)
  line = (
    f"answer reward: BERTScore from {model_dir} ({scorer.num_layers} layers)"
  )
  logging.info(line)
  print(line, flush=True)
  return scorer


def _judge_client(j: Any) -> Any:
  from stepjax.rl import judge

  return judge.JudgeClient.from_config(j)
