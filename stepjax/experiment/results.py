"""Results of a finished grid: WORKDIR/results.json.

For every run and the SFT start (group "sft"), from the final eval records
of each seed (`eval/final/records.jsonl`):
  groups.G.mean.M         mean over seeds of metric M, 95% bootstrap CI
  groups.G.per_seed.S.M   each seed's value
  groups.G.counts.M       numerator and denominator summed over all seeds'
                          records (e.g. ffp_early.den = failing completions)
  groups.G.change_from_sft.M   mean over seeds of (run - its seed's SFT
                          start), paired by seed and by eval record
  pairs[i]                a - b for each (a, b) of Experiment.pairs():
                          diff.M, and ffp_early_relative = (mean FFP early
                          share of a - that of b) / that of b
Metrics (record_terms.METRICS) are fractions in [0, 1] (mean_steps is a
count); a seed where a metric is undefined (e.g. FAR with no failure that
has a step after it) is left out of that metric's mean. Also: periodic
evals per RL step, judge_* counters summed over the RL steps of each run
and label_false_* shares averaged over them (metrics.jsonl), wall times
and the grid's set-up.
The bootstrap (bootstrap.py) is seeded, so the same grid gives the same file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from stepjax.eval import report as report_lib
from stepjax.experiment import bootstrap, grid, record_terms, spec
from stepjax.train import metrics as metrics_lib

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
SFT = grid.SFT
PERIODIC_METRICS = ("accuracy", "step_validity")


def collect(
  exp: spec.Experiment, workdir: str, command: str = ""
) -> dict[str, Any]:
  """The results dict of a grid whose jobs are all done."""
  groups = [SFT, *exp.runs]
  dirs = {
    (g, s): grid.sft_dir(workdir, s)
    if g == SFT
    else grid.run_dir(workdir, g, s)
    for g in groups
    for s in exp.seeds
  }
  records = {key: _final_records(d) for key, d in dirs.items()}
  for s in exp.seeds:
    _align(records, groups, s)
  terms_by_key = {}
  for g in groups:
    per_seed = [record_terms.terms(records[(g, s)]) for s in exp.seeds]
    for m in record_terms.METRICS:
      terms_by_key[(g, m)] = [t[m] for t in per_seed]
  points = bootstrap.point(terms_by_key)
  reps = bootstrap.replicates(
    terms_by_key, exp.bootstrap_samples, exp.bootstrap_seed
  )
  out = {
    "schema_version": SCHEMA_VERSION,
    "experiment": _setup(exp, workdir, records, command),
    "metrics": list(record_terms.METRICS),
    "groups": {},
    "pairs": [],
  }
  for g in groups:
    entry = {
      "mean": {
        m: bootstrap.estimate(points[(g, m)], reps[(g, m)])
        for m in record_terms.METRICS
      },
      "per_seed": {
        str(s): {m: _num(points[(g, m)][i]) for m in record_terms.METRICS}
        for i, s in enumerate(exp.seeds)
      },
      "counts": {
        m: {
          "num": float(sum(num.sum() for num, _ in terms_by_key[(g, m)])),
          "den": float(sum(den.sum() for _, den in terms_by_key[(g, m)])),
        }
        for m in record_terms.METRICS
      },
      "wall_s": {
        str(s): (grid.read_timing(dirs[(g, s)]) or {}).get("wall_s")
        for s in exp.seeds
      },
    }
    if g != SFT:
      entry["change_from_sft"] = _differences(points, reps, g, SFT)
    out["groups"][g] = entry
  for a, b in exp.pairs():
    out["pairs"].append(
      {
        "a": a,
        "b": b,
        "diff": _differences(points, reps, a, b),
        "ffp_early_relative": bootstrap.relative_difference(
          points[(a, "ffp_early")],
          points[(b, "ffp_early")],
          reps[(a, "ffp_early")],
          reps[(b, "ffp_early")],
        ),
      }
    )
  out["periodic"] = {
    name: _periodic(exp, workdir, name, dirs) for name in exp.runs
  }
  out["judge"] = {
    name: _judge_counters([dirs[(name, s)] for s in exp.seeds])
    for name in exp.runs
  }
  return out


def write(results: Mapping[str, Any], workdir: str) -> str:
  path = epath.Path(workdir) / RESULTS_FILE
  path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
  return str(path)


def load(results_dir: str) -> dict[str, Any]:
  path = epath.Path(results_dir) / RESULTS_FILE
  if not path.exists():
    raise ValueError(
      f"no {RESULTS_FILE} in {results_dir}; run `stepjax experiment` with "
      "that --workdir first"
    )
  return json.loads(path.read_text())


# ---------------------------------------------------------------- pieces


def _final_records(job_dir: str) -> list[dict[str, Any]]:
  path = epath.Path(job_dir) / "eval" / "final"
  if not (path / report_lib.RECORDS_FILE).exists():
    raise ValueError(
      f"no final eval records in {path}; run the experiment until every "
      "job is done"
    )
  return report_lib.load_records(str(path))


def _align(records: dict, groups: Sequence[str], seed: int) -> None:
  """Orders every group's records of `seed` like the SFT start's, by id;
  ValueError if a group was scored on other scans (no pairing possible)."""
  ref = [r["id"] for r in records[(SFT, seed)]]
  for g in groups[1:]:
    by_id = {r["id"]: r for r in records[(g, seed)]}
    if sorted(by_id) != sorted(ref) or len(by_id) != len(ref):
      raise ValueError(
        f"run {g!r} seed {seed} was evaluated on other scans than its SFT "
        "start; runs must share the eval set (do not override data.*)"
      )
    records[(g, seed)] = [by_id[i] for i in ref]


def _differences(points, reps, a: str, b: str) -> dict[str, Any]:
  return {
    m: bootstrap.difference(
      points[(a, m)], points[(b, m)], reps[(a, m)], reps[(b, m)]
    )
    for m in record_terms.METRICS
  }


def _setup(exp, workdir, records, command) -> dict[str, Any]:
  scans = sorted({len(records[(SFT, s)]) for s in exp.seeds})
  run_configs = {name: exp.run_config(name) for name in exp.runs}
  timing = grid_record(workdir)
  return {
    "command": command,
    "seeds": list(exp.seeds),
    "runs": {
      name: {
        "overrides": exp.run_specs[name],
        "algorithm": c.rl.algorithm,
        "process_source": c.rl.process_source,
        "rl_steps": c.train.steps,
        "prompts_per_step": c.data.batch_size,
        "completions": spec.completions_sampled(c),
      }
      for name, c in run_configs.items()
    },
    "baseline": exp.baseline,
    "eval_scans": scans[0] if len(scans) == 1 else scans,
    "sft_steps": exp.base.sft.steps,
    "rl_steps": sorted({c.train.steps for c in run_configs.values()}),
    "prompts_per_step": sorted(
      {c.data.batch_size for c in run_configs.values()}
    ),
    "group_size": exp.base.sampling.group_size,
    "model": exp.base.model.preset,
    "dataset": exp.base.data.dataset,
    "eval_every": exp.eval_every,
    "bootstrap_samples": exp.bootstrap_samples,
    "bootstrap_seed": exp.bootstrap_seed,
    "grid_wall_s": timing.get("wall_s"),
    "invocations": len(timing.get("invocations", [])),
  }


def grid_record(workdir: str) -> dict[str, Any]:
  path = epath.Path(workdir) / "grid.json"
  return json.loads(path.read_text()) if path.exists() else {}


def _periodic(exp, workdir, name, dirs) -> dict[str, Any]:
  """Eval accuracy / validity per RL step: the SFT start at step 0, every
  periodic eval (eval/rl_step_N), the final eval at train.steps."""
  final_step = exp.run_config(name).train.steps
  per_seed: dict[int, dict[int, dict]] = {}
  for s in exp.seeds:
    run = epath.Path(dirs[(name, s)]) / "eval"
    reports = {0: epath.Path(dirs[(SFT, s)]) / "eval" / "final"}
    for path in run.glob("rl_step_*"):
      reports[int(path.name.rsplit("_", 1)[1])] = path
    reports[final_step] = run / "final"
    per_seed[s] = {
      step: report_lib.load_report(str(path))
      for step, path in reports.items()
      if (path / report_lib.REPORT_FILE).exists()
    }
  steps = sorted({step for r in per_seed.values() for step in r})
  return {
    "steps": steps,
    **{
      m: {
        str(s): [_num(per_seed[s].get(step, {}).get(m)) for step in steps]
        for s in exp.seeds
      }
      for m in PERIODIC_METRICS
    },
  }


# Per-step metrics of a run's process labels summarised in the cost table:
# the judge's counters, and how wrong the labels were where the truth is
# known (`process.label_error_rates`: over all labels, over the ones that
# shaped their steps, over the head's labels among those, the counts of
# the head's truly valid and invalid steps, and the share of steps the
# head abstained on).
COST_PREFIXES = (
  "judge_",
  "label_false_",
  "label_used_",
  "label_head_",
  "label_abstained_",
)


def _judge_counters(run_dirs: Sequence[str]) -> dict[str, Any]:
  """judge_* and label_* metrics of the RL steps: per key, the mean
  over seeds of the sum over steps ("total") and of the mean per step
  ("per_step", steps without a value left out). A share (`*_share`, e.g.
  of the completions judged) has no meaningful sum: its "total" is None."""
  totals: dict[str, list[float]] = {}
  means: dict[str, list[float]] = {}
  for d in run_dirs:
    rl = metrics_lib.read_rl_metrics(d)
    keys = sorted({k for r in rl for k in r if k.startswith(COST_PREFIXES)})
    for k in keys:
      values = [v for r in rl if (v := _num(r.get(k))) is not None]
      if not values:
        continue
      totals.setdefault(k, []).append(float(np.sum(values)))
      means.setdefault(k, []).append(float(np.mean(values)))
  return {
    k: {
      "total": None if k.endswith("_share") else float(np.mean(totals[k])),
      "per_step": float(np.mean(means[k])),
    }
    for k in sorted(totals)
  }


def _num(x: Any) -> float | None:
  if x is None:
    return None
  x = float(x)
  return x if np.isfinite(x) else None
