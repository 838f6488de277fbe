"""The benchmark table of `stepjax eval --suite`: JSON, markdown and a plot.

Input: per checkpoint, one `eval.report` report per dataset of the suite
(None for a dataset whose copy is missing). Each report covers one dataset,
so its top-level fields are that dataset's. Per dataset the table keeps
accuracy (exact match), judged accuracy (`accuracy_judged`, when the answer
judge was on), step validity (where steps were labelled) and the First
Failure Point shares. Averages are unweighted means over the datasets that
have a value (as the paper's average over its eight sets), overall and per
`group` (in / out of distribution); each average says how many datasets it
covers, so a table with a missing set never passes for the full average.

suite.json (schema_version 1):
  {"schema_version", "suite", "title",
   "metrics": [metric keys with a value somewhere],
   "datasets": [{name, label, dataset, path, split, limit, open_ended,
                 group, image_dir, status ("ok" | "missing"), reason,
                 records_read, num_selected}],
   "checkpoints": [{"name", "checkpoint", "checkpoint_step",
                    "per_dataset": {dataset name: {"status": "ok",
                       "num_records", metric: value or null, ...,
                       "report": "<name>/<dataset>/report.json"}
                       | {"status": "missing"}},
                    "average": {metric: value or null},
                    "average_count": {metric: datasets averaged},
                    "group_average": {group: {metric: value or null}}}]}
Rates are fractions in [0, 1]; the markdown prints percent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.figure
import numpy as np
from etils import epath

from stepjax.eval import plots

SCHEMA_VERSION = 1
JSON_FILE, MARKDOWN_FILE, PLOT_FILE = "suite.json", "suite.md", "suite.png"
MISSING = "missing"

# (key, title, getter on a one-dataset report)
METRICS = (
  ("accuracy", "Accuracy (exact match)", lambda r: r.get("accuracy")),
  (
    "accuracy_judged",
    "Accuracy (answer judge)",
    lambda r: r.get("accuracy_judged"),
  ),
  ("step_validity", "Step validity", lambda r: r.get("step_validity")),
  (
    "ffp_early",
    "FFP early (% of failing completions)",
    lambda r: (r.get("ffp") or {}).get("early"),
  ),
  (
    "ffp_mid",
    "FFP mid (% of failing completions)",
    lambda r: (r.get("ffp") or {}).get("mid"),
  ),
  (
    "ffp_late",
    "FFP late (% of failing completions)",
    lambda r: (r.get("ffp") or {}).get("late"),
  ),
)
_TITLES = {key: title for key, title, _ in METRICS}
_SHORT = {
  "accuracy": "Acc %",
  "accuracy_judged": "Acc judged %",
  "step_validity": "Valid %",
  "ffp_early": "FFP early %",
  "ffp_mid": "FFP mid %",
  "ffp_late": "FFP late %",
}
# The matrix tables (checkpoints x datasets), one per metric shown.
_MATRIX_METRICS = ("accuracy", "accuracy_judged", "step_validity", "ffp_early")


def mean(values: Sequence[float | None]) -> tuple[float | None, int]:
  """(unweighted mean of the values that are not None, how many)."""
  present = [float(v) for v in values if v is not None]
  if not present:
    return None, 0
  return sum(present) / len(present), len(present)


def dataset_row(report: Mapping[str, Any]) -> dict[str, Any]:
  """The table's fields of one dataset's report."""
  row = {"status": "ok", "num_records": report.get("num_records")}
  for key, _, get in METRICS:
    row[key] = get(report)
  return row


def build(
  suite: str,
  title: str,
  datasets: Sequence[Mapping[str, Any]],
  results: Mapping[str, Mapping[str, Mapping[str, Any] | None]],
  checkpoints: Mapping[str, str] | None = None,
) -> dict[str, Any]:
  """The suite.json dict (module docstring).

  Args:
    suite, title: the suite's name and a one-line description.
    datasets: the suite's datasets in table order, each with at least
      `name`, `label`, `group` and `status`.
    results: checkpoint name -> dataset name -> report (None: missing).
    checkpoints: checkpoint name -> the path evaluated.
  """
  names = [d["name"] for d in datasets]
  groups = [d.get("group", "") for d in datasets]
  table_checkpoints = []
  shown: set[str] = set()
  for ckpt, reports in results.items():
    per_dataset: dict[str, dict[str, Any]] = {}
    for name in names:
      report = reports.get(name)
      if report is None:
        per_dataset[name] = {"status": MISSING}
        continue
      row = dataset_row(report)
      row["report"] = f"{ckpt}/{name}/report.json"
      per_dataset[name] = row
      shown.update(k for k, _, _ in METRICS if row[k] is not None)
    average, count = {}, {}
    for key, _, _ in METRICS:
      average[key], count[key] = mean([per_dataset[n].get(key) for n in names])
    group_average = {}
    for group in dict.fromkeys(g for g in groups if g):
      members = [n for n, g in zip(names, groups) if g == group]
      group_average[group] = {
        key: mean([per_dataset[n].get(key) for n in members])[0]
        for key, _, _ in METRICS
      }
    meta = next(
      (r.get("meta", {}) for r in reports.values() if r is not None), {}
    )
    table_checkpoints.append(
      {
        "name": ckpt,
        "checkpoint": (checkpoints or {}).get(ckpt, meta.get("checkpoint")),
        "checkpoint_step": meta.get("checkpoint_step"),
        "per_dataset": per_dataset,
        "average": average,
        "average_count": count,
        "group_average": group_average,
      }
    )
  return {
    "schema_version": SCHEMA_VERSION,
    "suite": suite,
    "title": title,
    "metrics": [k for k, _, _ in METRICS if k in shown or k == "accuracy"],
    "datasets": [dict(d) for d in datasets],
    "checkpoints": table_checkpoints,
  }


# --------------------------------------------------------------- markdown


def _pct(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.1f}"


def _cell(row: Mapping[str, Any], key: str) -> str:
  if row.get("status") == MISSING:
    return MISSING
  return _pct(row.get(key))


def _table(
  header: Sequence[str], rows: Sequence[Sequence[str]], text: int = 1
) -> str:
  """A GitHub table; the first `text` columns left-aligned, then numbers."""
  aligns = ["---"] * text + ["---:"] * (len(header) - text)
  lines = ["| " + " | ".join(header) + " |"]
  lines.append("|" + "|".join(aligns) + "|")
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _groups(table: Mapping[str, Any]) -> list[str]:
  groups = [d.get("group", "") for d in table["datasets"]]
  unique = list(dict.fromkeys(g for g in groups if g))
  return unique if len(unique) > 1 else []


def matrix(table: Mapping[str, Any], key: str) -> str:
  """Checkpoints as rows, datasets as columns, then the averages (the
  layout of the paper's accuracy table) for one metric, in percent."""
  datasets = table["datasets"]
  groups = _groups(table)
  total = len(datasets)
  counts = {c["average_count"][key] for c in table["checkpoints"]}
  avg = f"Avg ({counts.pop()}/{total})" if len(counts) == 1 else "Avg"
  header = ["Checkpoint"] + [d["label"] for d in datasets]
  header += [f"Avg {g}" for g in groups] + [avg]
  rows = []
  for c in table["checkpoints"]:
    cells = c["per_dataset"]
    row = [c["name"]] + [_cell(cells[d["name"]], key) for d in datasets]
    row += [_pct(c["group_average"][g][key]) for g in groups]
    row.append(_pct(c["average"][key]))
    rows.append(row)
  return _table(header, rows)


def per_checkpoint(table: Mapping[str, Any], checkpoint: Mapping) -> str:
  """Datasets as rows, every metric shown as columns, then the averages."""
  keys = table["metrics"]
  header = ["Dataset", "Group", "Split", "N"] + [_SHORT[k] for k in keys]
  rows = []
  for d in table["datasets"]:
    r = checkpoint["per_dataset"][d["name"]]
    n = MISSING if r["status"] == MISSING else str(r.get("num_records"))
    rows.append(
      [d["label"], d.get("group", ""), d["split"], n]
      + [_cell(r, k) for k in keys]
    )
  for g in _groups(table):
    rows.append(
      [f"Average, {g}", "", "", ""]
      + [_pct(checkpoint["group_average"][g][k]) for k in keys]
    )
  rows.append(
    ["Average", "", "", ""] + [_pct(checkpoint["average"][k]) for k in keys]
  )
  return _table(header, rows, text=3)


def markdown(table: Mapping[str, Any]) -> str:
  """suite.md: the matrix tables, then one detailed table per checkpoint."""
  lines = [f"# Benchmark suite: {table['suite']}", ""]
  if table.get("title"):
    lines += [table["title"], ""]
  missing = [d for d in table["datasets"] if d["status"] == MISSING]
  total = len(table["datasets"])
  lines.append(
    f"{total - len(missing)} of {total} datasets evaluated. Averages are "
    "unweighted means over the datasets with a value; Avg (k/n) says how "
    "many of the suite's n datasets they cover. Rates in %."
  )
  if missing:
    lines += ["", "Missing (skipped):"]
    lines += [f"- {d['label']}: {d['reason']}" for d in missing]
  lines.append("")
  for key in _MATRIX_METRICS:
    if key in table["metrics"]:
      lines += [f"## {_TITLES[key]}", "", matrix(table, key)]
  lines += ["## Datasets", ""]
  dataset_rows = [
    [
      d["label"],
      f"`{d['dataset']}`",
      d["split"],
      "yes" if d.get("open_ended") else "no",
      str(d.get("limit") or "all"),
      MISSING if d["status"] == MISSING else str(d.get("num_selected", "-")),
      f"`{d['path']}`",
    ]
    for d in table["datasets"]
  ]
  header = ["Dataset", "Source", "Split", "Open-ended only", "Limit", "N"]
  header.append("Path")
  lines += [_table(header, dataset_rows, text=len(header))]
  for c in table["checkpoints"]:
    where = [f"`{c['checkpoint']}`"] if c.get("checkpoint") else []
    if c.get("checkpoint_step") is not None:
      where.append(f"step {c['checkpoint_step']}")
    title = c["name"] + (f" ({', '.join(where)})" if where else "")
    lines += [f"## {title}", "", per_checkpoint(table, c)]
  return "\n".join(lines)


def markdown_summary(table: Mapping[str, Any]) -> str:
  """The accuracy matrix (judged, when present, after the exact one)."""
  parts = [matrix(table, "accuracy")]
  if "accuracy_judged" in table["metrics"]:
    parts.append(matrix(table, "accuracy_judged"))
  return "\n".join(parts)


# ------------------------------------------------------------------- plot


def plot(table: Mapping[str, Any], path: str) -> str:
  """Grouped bars per dataset and for the average: accuracy (judged when
  the answer judge was on, else exact), and step validity when labelled.
  Missing datasets are marked on the axis."""
  shown = table["metrics"]
  panels = ["accuracy_judged" if "accuracy_judged" in shown else "accuracy"]
  if "step_validity" in shown:
    panels.append("step_validity")
  datasets = table["datasets"]
  ckpts = table["checkpoints"]
  labels = [
    d["label"] + ("\n(missing)" if d["status"] == MISSING else "")
    for d in datasets
  ]
  x = np.arange(len(labels) + 1)
  width = 0.8 / max(len(ckpts), 1)
  fig = matplotlib.figure.Figure(
    figsize=(max(6.0, 1.1 * len(labels) + 2), 3.6 * len(panels))
  )
  grid = fig.subplots(
    len(panels), 1, squeeze=False, gridspec_kw={"hspace": 0.45}
  )
  axes = grid[:, 0]
  for ax, metric in zip(axes, panels):
    for j, c in enumerate(ckpts):
      values = [c["per_dataset"][d["name"]].get(metric) for d in datasets] + [
        c["average"][metric]
      ]
      heights = [math.nan if v is None else 100 * v for v in values]
      offset = (j - (len(ckpts) - 1) / 2) * width
      bars = ax.bar(
        x + offset,
        np.nan_to_num(heights),
        width,
        label=c["name"],
        edgecolor="black",
        linewidth=0.5,
      )
      plots.label_bars(ax, bars, heights, fontsize=7)
    ax.axvline(len(datasets) - 0.5, color="#888888", linewidth=0.8)
    counts = {c["average_count"][metric] for c in ckpts}
    average = "Average" + (
      f"\n({counts.pop()} of {len(datasets)})" if len(counts) == 1 else ""
    )
    ax.set_xticks(x, labels + [average], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 110)
    ax.set_title(_TITLES[metric])
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if len(ckpts) > 1:
      ax.legend(fontsize=8, frameon=False)
  return plots.save_png(fig, path, dpi=120)


def write(table: Mapping[str, Any], out_dir: str) -> list[str]:
  """Writes suite.json, suite.md and suite.png into `out_dir`."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / JSON_FILE).write_text(json.dumps(table, indent=2) + "\n")
  (out / MARKDOWN_FILE).write_text(markdown(table))
  return [
    str(out / JSON_FILE),
    str(out / MARKDOWN_FILE),
    plot(table, str(out / PLOT_FILE)),
  ]
