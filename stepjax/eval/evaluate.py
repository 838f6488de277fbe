"""Evaluation during training: decode the eval split, score every step.

Greedy decoding (or `sampling.eval_temperature`) of one completion per
eval record, its steps labelled by the SynthMed verifier when the records
carry a scene and by the run's process-reward source otherwise, answers
checked by normalised exact match and, with `eval.answer_judge=judge`, by
the LLM answer judge too (`judge_answers`). The result is an `eval.report`
report (accuracy, judged accuracy, step validity, first-failure shares,
FAR) plus per-record rows.
"""

from __future__ import annotations

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


def eval_dataset(trainer: Any):
  c = trainer.config
  opts = pipeline.PipelineOptions.from_config(
    c,
    model_cfg=trainer.cfg,
    shuffle=False,
    num_epochs=1,
    drop_remainder=False,
    batch_size=int(c.data.eval_batch_size or c.data.batch_size),
  )
  return pipeline.make_dataset(
    trainer.eval_source,
    trainer.tokenizer,
    opts,
    think_tag=c.tokenizer.think_tag,
  )


def evaluate(trainer: Any, params: Any, name: str) -> dict[str, Any]:
  """Decodes the eval split with `params`; returns the report dict.

  The report and per-record rows are written to `workdir/eval/NAME/`
  (report.json, records.jsonl) by process 0.
  """
  c = trainer.config
  rows, skipped, judged = score_and_judge(trainer, params)
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
    out = epath.Path(trainer.workdir) / "eval" / name
    report_lib.write(report, rows, str(out))
  return report


def score_rows(trainer: Any, params: Any) -> list[dict[str, Any]]:
  """One row per decoded eval record (the `eval.report` record keys plus
  the raw completion)."""
  return score(trainer, params)[0]


def score(
  trainer: Any, params: Any
) -> tuple[list[dict[str, Any]], dict[str, int]]:
  """(`score_rows`, {reason: count} of the eval records skipped as bad
  records, `pipeline.skip_counts`), over every process's slice."""
  rows, skipped = _score_local(trainer, params)
  rows, skipped, _ = _from_all_processes(rows, skipped, None)
  return rows, skipped


def score_and_judge(
  trainer: Any, params: Any
) -> tuple[list[dict[str, Any]], dict[str, int], dict | None]:
  """`score`, plus the answer judge's verdicts (`judge_answers`): each
  process asks the judge about its own rows only, then rows, skip counts
  and the judge's counts are gathered from every process."""
  rows, skipped = _score_local(trainer, params)
  judged = judge_answers(trainer.config, rows)
  return _from_all_processes(rows, skipped, judged)


def _score_local(
  trainer: Any, params: Any
) -> tuple[list[dict[str, Any]], dict[str, int]]:
  c = trainer.config
  verifier = process.VerifierSource(
    synthmed.step_verifier(c.data.eval_verifier)
  )
  rng = jax.random.key(c.seed + 7)
  rows = []
  iterator = iter(eval_dataset(trainer))
  for batch in iterator:
    out = trainer.sample(
      params,
      batch,
      rng,
      group_size=1,
      temperature=c.sampling.eval_temperature,
    )
    layout = rollout.step_layout(
      out.tokens_BxR,
      out.lengths_B,
      trainer.tokenizer,
      c.tokenizer.think_tag,
    )
    examples = batches.examples(batch)
    requests = rollout.step_requests(layout, examples, 1)
    has_scene = all("scene" in (ex["meta"] or {}) for ex in examples)
    source = verifier if has_scene else _external_labeler(trainer)
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


def _external_labeler(trainer: Any):
  """The judge, when the run has one; step labels for evaluation must not
  come from the policy's own value head."""
  source = trainer.process_source
  if isinstance(source, process.HybridSource):
    return source.judge
  if isinstance(source, process.JudgeSource):
    return source
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
