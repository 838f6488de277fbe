"""The `stepjax judge-check` report: report.json, report.md and a figure.

The report dict is built by `judge_check.run` (its fields are documented in
docs/judge_check.md); this module only lays it out: `markdown` (tables of
agreement, precision / recall / F1 of "invalid", by step position and by
kind of completion, the confusion matrix and the cost), `plot` (confusion
matrix, per-set scores, agreement by position; matplotlib Agg figures, as
`eval.plots`) and `summary_line` (the line the command prints).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import matplotlib.figure
import numpy as np
from etils import epath

from stepjax.eval import plots
from stepjax.rl import failures as metrics
from stepjax.rl import process

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOT = "judge_check.png"
_SCORES = (
  ("agreement", "Agreement"),
  ("precision_invalid", "Precision (invalid)"),
  ("recall_invalid", "Recall (invalid)"),
  ("f1_invalid", "F1 (invalid)"),
)


def _pct(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
  return "-" if x is None else f"{x:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |"]
  lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines + [""]


def _score_cells(a: Mapping[str, Any]) -> list[str]:
  return [
    str(a["steps"]),
    *(_pct(a[k]) for k, _ in _SCORES),
    _num(a["kappa"]),
    _pct(a["truth_invalid_share"]),
    _pct(a["judged_invalid_share"]),
  ]


_SCORE_HEADER = [
  "steps",
  "agreement %",
  "precision inv. %",
  "recall inv. %",
  "F1 inv. %",
  "kappa",
  "truly invalid %",
  "judged invalid %",
]


def markdown(report: Mapping[str, Any]) -> str:
  """The report as a markdown page."""
  j, cost = report["judge"], report["cost"]
  sets = report["sets"]
  lines = [
    f"# Step judge calibration: {j['model']}",
    "",
    f"Judge: `{j['model']}`"
    + (f" at {j['url']}" if j.get("url") else "")
    + (f", label noise {j['label_noise']}" if j["label_noise"] else "")
    + f"; fallback `{j['fallback']}`. Truth: the SynthMed "
    f"`{report['verifier']}` verifier. {report['num']} completions per set "
    f"(seed {report['seed']})"
    + (
      f", sampled from `{report['checkpoint']}`" if report["checkpoint"] else ""
    )
    + ". Positive class: an invalid step.",
    "",
    "## Agreement with the verifier",
    "",
  ]
  rows = [[name] + _score_cells(s) for name, s in sets.items()]
  if len(sets) > 1:
    rows.append(["all"] + _score_cells(report["all"]))
  lines += _table(["set"] + _SCORE_HEADER, rows)
  lines += ["## By step position (all sets)", ""]
  lines += [
    "Steps bucketed by their place in the chain as the First Failure Point "
    "is: early [0, 1/3), mid [1/3, 2/3), late [2/3, 1].",
    "",
  ]
  rows = [
    [b] + _score_cells(report["all"]["by_position"][b]) for b in metrics.BINS
  ]
  lines += _table(["position"] + _SCORE_HEADER, rows)
  lines += ["## By kind of completion", ""]
  rows = []
  for name, s in sets.items():
    for kind, a in s["by_kind"].items():
      rows.append([f"{name}: {kind}", str(a["completions"])] + _score_cells(a))
  lines += _table(["kind", "completions"] + _SCORE_HEADER, rows)
  c = report["all"]["confusion"]
  lines += ["## Confusion matrix (all sets, steps)", ""]
  lines += _table(
    ["", "judge: valid", "judge: invalid"],
    [
      [
        "truth: valid",
        str(c["truth_valid"]["judge_valid"]),
        str(c["truth_valid"]["judge_invalid"]),
      ],
      [
        "truth: invalid",
        str(c["truth_invalid"]["judge_valid"]),
        str(c["truth_invalid"]["judge_invalid"]),
      ],
    ],
  )
  lines += ["## Cost", ""]
  header = [
    "set",
    "completions",
    "calls",
    "cache hits",
    "retries",
    "fallbacks",
    "prompt tokens",
    "completion tokens",
    "seconds",
  ]
  rows = []
  totals = [("all", None)] if len(sets) > 1 else []
  for name, s in [*sets.items(), *totals]:
    k = cost if s is None else s["cost"]
    tok = k["tokens_reported"]
    rows.append(
      [
        name,
        str(k["requests"]),
        str(k["calls"]),
        str(k["cache_hits"]),
        str(k["retries"]),
        str(k["fallbacks"]),
        str(k["prompt_tokens"]) if tok else "-",
        str(k["completion_tokens"]) if tok else "-",
        f"{k['seconds']:.1f}",
      ]
    )
  lines += _table(header, rows)
  causes = ", ".join(
    f"{c}={cost['fallbacks_by_cause'][c]}"
    for c in process.FALLBACK_CAUSES
    if cost["fallbacks_by_cause"][c]
  )
  fb = sum(s["fallback_completions"] for s in sets.values())
  sk = sum(s["skipped_completions"] for s in sets.values())
  lines += [
    f"Fallbacks by cause: {causes or 'none'}. Completions judged with "
    f"fallback labels: {fb} (kept, as training would use them); skipped "
    f"(judge.fallback=skip): {sk}. Tokens: "
    + (
      "as the server reported them."
      if cost["tokens_reported"]
      else "the server reported no usage."
    ),
    "",
  ]
  return "\n".join(lines)


def summary_line(report: Mapping[str, Any]) -> str:
  a, cost = report["all"], report["cost"]
  return (
    f"judge {report['judge']['model']}: agreement {_pct(a['agreement'])}% "
    f"on {a['steps']} steps; invalid steps: precision "
    f"{_pct(a['precision_invalid'])}%, recall {_pct(a['recall_invalid'])}%, "
    f"F1 {_pct(a['f1_invalid'])}%; {cost['calls']} calls, "
    f"{cost['fallbacks']} fallbacks, {cost['seconds']:.1f} s"
  )


def plot(report: Mapping[str, Any], path: str) -> str:
  """Confusion matrix (share of all steps), the four scores per set, and
  agreement / recall of invalid by step position; one PNG."""
  fig = matplotlib.figure.Figure(figsize=(13.5, 4.2))
  ax_c, ax_s, ax_p = fig.subplots(1, 3, width_ratios=(1, 1.4, 1.2))
  c = report["all"]["confusion"]
  m_2x2 = np.array(
    [
      [c["truth_valid"]["judge_valid"], c["truth_valid"]["judge_invalid"]],
      [c["truth_invalid"]["judge_valid"], c["truth_invalid"]["judge_invalid"]],
    ],
    float,
  )
  total = max(m_2x2.sum(), 1.0)
  ax_c.imshow(m_2x2 / total, cmap="Blues", vmin=0.0, vmax=1.0)
  for r in range(2):
    for k in range(2):
      ax_c.text(
        k,
        r,
        f"{int(m_2x2[r, k])}\n{100 * m_2x2[r, k] / total:.1f}%",
        ha="center",
        va="center",
        color="white" if m_2x2[r, k] / total > 0.5 else "black",
      )
  ax_c.set_xticks([0, 1], ["judge valid", "judge invalid"])
  ax_c.set_yticks([0, 1], ["truth valid", "truth invalid"])
  ax_c.set_title("Confusion matrix (all steps)")

  entries = dict(report["sets"])
  if len(entries) > 1:
    entries["all"] = report["all"]
  width = 0.8 / len(entries)
  x = np.arange(len(_SCORES))
  for i, (name, a) in enumerate(entries.items()):
    vals = [np.nan if a[k] is None else 100 * a[k] for k, _ in _SCORES]
    ax_s.bar(x + (i - (len(entries) - 1) / 2) * width, vals, width, label=name)
  ax_s.set_xticks(
    x, [label.replace(" (", "\n(") for _, label in _SCORES], fontsize=8
  )
  ax_s.set_ylim(0, 105)
  ax_s.set_ylabel("%")
  ax_s.set_title("Against the SynthMed verifier")
  ax_s.legend(fontsize=8, loc="lower right")

  pos = report["all"]["by_position"]
  xb = np.arange(len(metrics.BINS))
  for key, label, shift in (
    ("agreement", "agreement", -0.2),
    ("recall_invalid", "recall (invalid)", 0.2),
  ):
    vals = [
      np.nan if pos[b][key] is None else 100 * pos[b][key] for b in metrics.BINS
    ]
    ax_p.bar(xb + shift, vals, 0.4, label=label)
  ax_p.set_xticks(xb, [f"{b}\n({pos[b]['steps']} steps)" for b in metrics.BINS])
  ax_p.set_ylim(0, 105)
  ax_p.set_title("By step position in the chain")
  ax_p.legend(fontsize=8, loc="lower right")
  fig.suptitle(f"Step judge: {report['judge']['model']}", fontsize=10)
  return plots.save_png(fig, path, dpi=110)


def write(report: Mapping[str, Any], out_dir: str) -> list[str]:
  """report.json, report.md and judge_check.png in `out_dir`."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / REPORT_JSON).write_text(
    json.dumps(report, indent=2, sort_keys=True) + "\n"
  )
  (out / REPORT_MD).write_text(markdown(report))
  return [
    str(out / REPORT_JSON),
    str(out / REPORT_MD),
    plot(report, str(out / PLOT)),
  ]
