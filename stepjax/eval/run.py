r"""`stepjax eval`: score a checkpoint on an eval split, or compare runs.

  stepjax eval --config=configs/synthmed_tiny.py --checkpoint=runs/a \
      --workdir=runs/a_eval [--split=eval|train] [--num=4]
  stepjax eval --compare=runs/a,runs/b --workdir=runs/cmp

Evaluation decodes the split with the policy (greedy, or
`--config.sampling.eval_temperature`), labels each completion's steps (the
SynthMed verifier for records with a scene, else the configured
`rl.process_source`) and checks answers (exact match, and with
`--config.eval.answer_judge=judge` the LLM answer judge too), through the same
`eval.evaluate` functions the training loop runs, on the `Policy` that
`eval.checkpoints.load` reads. It writes into --workdir:
report.json, records.jsonl, ffp.png, far.png and, when --checkpoint is a
run directory with a metrics.jsonl, curves.png (reward / accuracy / step
validity over training).

`--num=N` (N > 1, given explicitly) samples N completions per record at
`sampling.temperature`, each batch from its own key; each is one row of
records.jsonl, its id suffixed `#k`, and the report aggregates over all of
them.

`--compare=a,b,...` takes directories holding report.json, or run
directories holding eval/final/report.json (or eval outputs of this
command); it prints one side-by-side table, writes it to
--workdir/compare.md and draws the combined plots there. With
--checkpoint as well, the new evaluation joins the comparison.

`--suite=configs/suites/paper.py:root=DIR` evaluates --checkpoint and every
--compare entry (checkpoints, then) on each dataset the suite lists and
writes one table (suite.md, suite.json, suite.png; `eval.suite`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from absl import logging
from etils import epath

from stepjax.errors import InputError, MissingInputError
from stepjax.eval import checkpoints, evaluate, plots
from stepjax.eval import report as report_lib
from stepjax.train import components
from stepjax.train import metrics as train_metrics

SPLITS = ("eval", "train")


def main(argv: list[str], config: Any, flag_values: Any) -> None:
  logging.set_verbosity(config.log_level)
  if getattr(flag_values, "suite", None) is not None:
    from stepjax.eval import suite  # imports this module

    suite.main(config, flag_values.suite, flag_values)
    return
  num = flag_values.num if flag_values["num"].present else 1
  reports: dict[str, dict] = {}
  runs: dict[str, list] = {}
  workdir = flag_values.workdir
  if flag_values.checkpoint:
    report = run(
      config,
      flag_values.checkpoint,
      workdir,
      split=flag_values.split,
      num_samples=num,
    )
    print(evaluate.summary_line(report), flush=True)
    print(f"wrote {workdir}/report.json, records.jsonl and plots", flush=True)
    name = _run_name(flag_values.checkpoint)
    reports[name] = report
    runs[name] = _curves_for(flag_values.checkpoint, report)
  if flag_values.compare:
    table = compare(flag_values.compare, workdir, extra=reports, runs=runs)
    print(table, flush=True)


# ----------------------------------------------------------------- data


def eval_source(config: Any, split: str = "eval") -> Any:
  """The records of `split` (eval | train), as the trainer reads them."""
  if split not in SPLITS:
    raise InputError(f"--split={split!r}: expected one of {SPLITS}")
  return components.make_source(config, split)


class RepeatedSource:
  """Each record of `source` N times in a row, ids suffixed `#k`."""

  def __init__(self, source: Any, num: int):
    self.source, self.num = source, int(num)
    self.skipped = getattr(source, "skipped", [])

  def __len__(self) -> int:
    return len(self.source) * self.num

  def __getitem__(self, index: int):
    record = self.source[int(index) // self.num]
    k = int(index) % self.num
    return dataclasses.replace(record, id=f"{record.id}#{k}")

  def __repr__(self) -> str:
    return f"RepeatedSource({self.source!r}, {self.num})"


def process_source(config: Any) -> Any:
  """The step labeller for records without a SynthMed scene.

  Only a judge (judge / hybrid sources) labels such records in evaluation;
  with the verifier or the value head their steps stay unlabelled and the
  report holds accuracy only (`eval.evaluate` decides).
  """
  return components.process_source(config)


def run(
  config: Any,
  checkpoint: str,
  workdir: str,
  *,
  split: str = "eval",
  num_samples: int = 1,
  loaded: checkpoints.LoadedPolicy | None = None,
  source: Any = None,
  meta: dict[str, Any] | None = None,
  draw_plots: bool = True,
) -> dict[str, Any]:
  """Evaluates `checkpoint` on `split`; writes report, records and plots
  into `workdir`; returns the report dict.

  A caller that evaluates one checkpoint on several datasets
  (`eval.suite`) passes the policy it `loaded` once (whose config names
  the dataset), the records (`source`, instead of the config's `split`),
  `meta` keys added to the report's, and `draw_plots=False`.
  """
  if num_samples < 1:
    raise InputError(f"--num={num_samples}: expected at least 1 sample")
  if loaded is None:
    loaded = checkpoints.load(config, checkpoint)
  config = loaded.config
  if source is None:
    source = eval_source(config, split)
  if num_samples > 1:
    source = RepeatedSource(source, num_samples)
    config = checkpoints.with_updates(
      config, **{"sampling.eval_temperature": config.sampling.temperature}
    )
  out = epath.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  task = evaluate.EvalTask(
    config=config,
    source=source,
    labeller=process_source(config),
    workdir=str(out),
    resample=num_samples > 1,
  )
  rows, skipped, judged = evaluate.score_and_judge(loaded, task)
  meta = {
    "eval": split,
    "algorithm": config.rl.algorithm,
    "checkpoint": str(checkpoint),
    "checkpoint_kind": loaded.kind,
    "checkpoint_step": loaded.step,
    "run_dir": loaded.run_dir,
    "dataset": config.data.dataset,
    "split": split,
    "samples_per_record": num_samples,
    "temperature": float(config.sampling.eval_temperature),
    "max_new_tokens": int(config.sampling.max_new_tokens),
    **(meta or {}),
  }
  report = report_lib.build_report(
    [report_lib.record_fields(r) for r in rows],
    meta=meta,
    skipped=skipped,
    answer_judge=judged,
  )
  if jax.process_index() == 0:
    report_lib.write(report, rows, str(out))
  if jax.process_index() == 0 and draw_plots:
    name = _run_name(checkpoint)
    plots.render_all(
      {name: report}, str(out), runs={name: _curves_for(checkpoint, report)}
    )
  return report


# --------------------------------------------------------------- compare


def _run_name(path: str) -> str:
  p = epath.Path(path)
  return p.name or str(path)


def find_report(path: str) -> str:
  """report.json of a compare entry: DIR/report.json, or a run directory's
  eval/final/report.json."""
  p = epath.Path(path)
  for candidate in (p, p / "eval" / "final"):
    if (candidate / report_lib.REPORT_FILE).exists():
      return str(candidate / report_lib.REPORT_FILE)
  if p.name == report_lib.REPORT_FILE and p.exists():
    return str(p)
  raise MissingInputError(
    f"--compare entry {path}: neither {p}/report.json nor "
    f"{p}/eval/final/report.json exists; pass `stepjax eval` outputs or "
    "training run directories"
  )


def _curves_for(path: str, report: dict[str, Any]) -> list[dict]:
  """Training metrics of the run behind a report ([] when unknown)."""
  for d in (path, report.get("meta", {}).get("run_dir") or ""):
    if d and (epath.Path(d) / "metrics.jsonl").exists():
      return train_metrics.read_metrics(d)
  return []


def compare(
  paths: list[str],
  out_dir: str,
  extra: dict[str, dict] | None = None,
  runs: dict[str, list] | None = None,
) -> str:
  """Loads the reports at `paths`, writes compare.md and combined plots to
  `out_dir`; returns the table. `extra` reports come first."""
  reports = dict(extra or {})
  curves = dict(runs or {})
  for path in paths:
    name = _run_name(path)
    while name in reports:
      name = f"{name}'"
    report = report_lib.load_report(find_report(path))
    reports[name] = report
    curves[name] = _curves_for(path, report)
  table = report_lib.compare(reports, fmt="plain")
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "compare.md").write_text(report_lib.compare(reports, fmt="markdown"))
  plots.render_all(reports, str(out), runs=curves)
  return table
