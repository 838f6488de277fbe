"""Evaluation of a policy: decode the eval split, score every step.

A `train.policy.Policy` (the trainer's during a run, or one
`eval.checkpoints.load` read for `stepjax eval`) is evaluated on an
`EvalTask`: the job config, the eval records, the run's step labeller,
where reports go and how sampler keys are drawn. Nothing here needs a
Trainer.

Greedy decoding (or `sampling.eval_temperature`) of one completion per
eval record, its steps labelled by the SynthMed verifier when the records
carry a scene and by the task's labeller (a judge) otherwise, answers
checked by normalised exact match and, with `eval.answer_judge=judge`, by
the LLM answer judge too (`judge_answers`). The result is an `eval.report`
report (accuracy, judged accuracy, step validity, first-failure shares,
FAR) plus per-record rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from etils import epath

from stepjax.data import errors as data_errors
from stepjax.data import pipeline, synthmed
from stepjax.eval import answer_judge, plots
from stepjax.eval import report as report_lib
from stepjax.rl import process, rewards
from stepjax.train import batches, distributed, rollout
from stepjax.train import metrics as metrics_lib
from stepjax.train import policy as policy_lib


@dataclasses.dataclass(frozen=True)
class EvalTask:
  """What a policy is evaluated on, and how.

  config: the job config (data options, `sampling.*`, `tokenizer.*`,
    `data.eval_verifier`, `eval.answer_judge`, `seed`, `rl.algorithm`).
  source: the eval records (a random-access source, as the pipeline reads).
  labeller: the run's process-reward source (None: none). Only a judge in
    it (`judge`, or the judge of `hybrid`) labels the steps of records
    without a SynthMed scene, never the policy's own value head; without
    one such steps stay unlabelled and the report holds accuracy only.
  workdir: `evaluate` writes its report and rows to workdir/eval/NAME/.
  resample: False: every batch is decoded with one fixed key, as training
    evaluates; True: each batch draws from its own key, so the N copies
    of a record (`stepjax eval --num=N`) get different completions
    wherever they fall.
  """

  config: Any
  source: Any
  labeller: Any = None
  workdir: str = ""
  resample: bool = False

  def batch_key(self, index: int) -> jax.Array:
    """The sampler key of eval batch `index` (see `resample`)."""
    if self.resample:
      return jax.random.fold_in(jax.random.key(self.config.seed + 11), index)
    return jax.random.key(self.config.seed + 7)


def eval_dataset(policy: policy_lib.Policy, task: EvalTask):
  """The task's records as one pass of unshuffled batches for `policy`."""
  c = task.config
  opts = pipeline.PipelineOptions.from_config(
    c,
    model_cfg=policy.cfg,
    shuffle=False,
    num_epochs=1,
    drop_remainder=False,
    batch_size=int(c.data.eval_batch_size or c.data.batch_size),
  )
  return pipeline.make_dataset(
    task.source,
    policy.tokenizer,
    opts,
    think_tag=c.tokenizer.think_tag,
  )


def evaluate(
  policy: policy_lib.Policy, task: EvalTask, name: str
) -> dict[str, Any]:
  """Decodes the task's records with `policy`; returns the report dict.

  The report and per-record rows are written to `task.workdir/eval/NAME/`
  (report.json, records.jsonl) by process 0.
  """
  c = task.config
  rows, skipped, judged = score_and_judge(policy, task)
  report = report_lib.build_report(
    [report_lib.record_fields(r) for r in rows],
    meta={
      "eval": name,
      "algorithm": c.rl.algorithm,
      "verifier": c.data.eval_verifier,
    },
    skipped=skipped,
    answer_judge=judged,
  )
  if jax.process_index() == 0:
    out = epath.Path(task.workdir) / "eval" / name
    report_lib.write(report, rows, str(out))
  return report


def score_rows(
  policy: policy_lib.Policy, task: EvalTask
) -> list[dict[str, Any]]:
  """One row per decoded eval record (the `eval.report` record keys plus
  the raw completion)."""
  return score(policy, task)[0]


def score(
  policy: policy_lib.Policy, task: EvalTask
) -> tuple[list[dict[str, Any]], dict[str, int]]:
  """(`score_rows`, {reason: count} of the eval records skipped as bad
  records, `pipeline.skip_counts`), over every process's slice."""
  rows, skipped = _score_local(policy, task)
  rows, skipped, _ = _from_all_processes(rows, skipped, None)
  return rows, skipped


def score_and_judge(
  policy: policy_lib.Policy, task: EvalTask
) -> tuple[list[dict[str, Any]], dict[str, int], dict | None]:
  """`score`, plus the answer judge's verdicts (`judge_answers`): each
  process asks the judge about its own rows only, then rows, skip counts
  and the judge's counts are gathered from every process."""
  rows, skipped = _score_local(policy, task)
  judged = judge_answers(task.config, rows)
  return _from_all_processes(rows, skipped, judged)


def _score_local(
  policy: policy_lib.Policy, task: EvalTask
) -> tuple[list[dict[str, Any]], dict[str, int]]:
  c = task.config
  verifier = process.VerifierSource(
    synthmed.step_verifier(c.data.eval_verifier)
  )
  labeller = _external_labeler(task.labeller)
  rows = []
  iterator = iter(eval_dataset(policy, task))
  for index, batch in enumerate(iterator):
    out = rollout.sample(
      policy,
      batch,
      task.batch_key(index),
      c.sampling,
      group_size=1,
      temperature=c.sampling.eval_temperature,
      build_sequences=False,
    )
    layout = rollout.step_layout(
      out.tokens_BxR,
      out.lengths_B,
      policy.tokenizer,
      c.tokenizer.think_tag,
    )
    examples = batches.examples(batch)
    requests = rollout.step_requests(layout.step_texts, examples, 1)
    has_scene = all("scene" in (ex["meta"] or {}) for ex in examples)
    source = verifier if has_scene else labeller
    if source is None:
      # No rule verifier and no judge: step validity is unknown (reported
      # as such), never guessed from the policy's own value head.
      labels = [process.StepLabels((), skipped=True) for _ in requests]
    else:
      labels = source.label_steps(requests)
    for i, ex in enumerate(examples):
      answer = rewards.extract_answer(layout.texts[i])
      rows.append(
        {
          "id": ex["id"],
          "question": ex["question"],
          "gold_answer": ex["answer"],
          "answer": answer,
          "correct": bool(rewards.answers_match(answer, ex["answer"])),
          "steps": list(layout.step_texts[i]),
          "step_labels": [] if labels[i].skipped else list(labels[i].labels),
          "dataset": c.data.dataset,
          "completion": layout.texts[i],
        }
      )
  return rows, pipeline.skip_counts(iterator)


def _from_all_processes(
  rows: list[dict[str, Any]], skipped: dict[str, int], judged: dict | None
) -> tuple[list[dict[str, Any]], dict[str, int], dict | None]:
  """Every process's rows (in process order), summed skip counts and
  summed judge counts: each process decodes (and judges) its own slice of
  the eval split; the report covers them all."""
  parts = distributed.all_processes(
    {"rows": rows, "skipped": skipped, "judged": judged}
  )
  rows = [row for part in parts for row in part["rows"]]
  total = data_errors.most_common_first(
    _sum_counts([part["skipped"] for part in parts])
  )
  if judged is not None:
    judged = _sum_counts([part["judged"] for part in parts])
  return rows, total, judged


def _sum_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
  """Numbers summed key by key over the union of keys (nested dicts too);
  other values are taken from the first part that has them (the judge's
  model, url, mode, fallback)."""
  out: dict[str, Any] = {}
  for part in parts:
    for key, value in part.items():
      out.setdefault(key, value)
  for key, value in out.items():
    if isinstance(value, dict):
      out[key] = _sum_counts([p.get(key) or {} for p in parts])
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      out[key] = type(value)(sum(p.get(key, 0) for p in parts))
  return out


def judge_answers(config: Any, rows: list[dict[str, Any]]) -> dict | None:
  """With `eval.answer_judge=judge`, the LLM answer judge's verdict on
  every row (`judged_correct`) and its summary for the report (counts of
  calls, cache hits, retries, fallbacks by cause); None for exact match."""
  return answer_judge.judge_rows(config, rows)


def _external_labeler(labeller: Any):
  """The judge in `labeller` (a process-reward source), when it has one;
  step labels for evaluation must not come from the policy's own value
  head."""
  if isinstance(labeller, process.HybridSource):
    return labeller.judge
  if isinstance(labeller, process.JudgeSource):
    return labeller
  return None


def write_plots(workdir: str, reports: dict[str, dict[str, Any]]) -> list[str]:
  """The run's figures in `workdir/eval/plots/`: FFP shares and FAR of its
  evaluations (before RL vs final, and any periodic ones) and its smoothed
  RL curves (from metrics.jsonl)."""
  out = epath.Path(workdir) / "eval" / "plots"
  paths = []
  if reports:
    paths.append(plots.plot_ffp(reports, str(out / "ffp.png")))
    paths.append(plots.plot_far(reports, str(out / "far.png")))
  records = metrics_lib.read_metrics(workdir)
  if any(r.get("phase") == "rl" for r in records):
    paths.append(
      plots.plot_smoothed_curves(records, str(out / "rl_curves.png"))
    )
  return paths


def summary_line(r: dict[str, Any]) -> str:
  early = r["ffp"]["early"]
  judged = ""
  aj = r.get("answer_judge") or {}
  if aj.get("mode") == "judge":
    judged = (
      f" accuracy_judged={_fmt(r.get('accuracy_judged'))} (answer judge: "
      f"calls={aj['calls']} cache_hits={aj['cache_hits']} "
      f"fallbacks={aj['fallbacks']})"
    )
  contra = (r.get("answer_vs_chain") or {}).get("share")
  return (
    f"accuracy={_fmt(r['accuracy'])}{judged} step_validity="
    f"{_fmt(r['step_validity'])} early_failure_share={_fmt(early)} "
    f"answers_contradicting_chain={_fmt(contra)} (n={r['num_records']})"
  )


def _fmt(x: float | None) -> str:
  return "-" if x is None else f"{x:.3f}"


def table(reports: dict[str, dict[str, Any]]) -> str:
  """The before/after table printed at the end of a run."""
  return "\n" + report_lib.compare(reports, fmt="plain")
