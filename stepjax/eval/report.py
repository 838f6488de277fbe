"""Evaluation reports: per-record results -> report.json, and run comparison.

A record is the outcome of one generated completion for one question:

  {"id": str, "question": str, "gold_answer": str, "answer": str,
   "correct": bool, "steps": [str, ...], "step_labels": [0 | 1, ...],
   "dataset": str}

with len(steps) == len(step_labels) = K (K = 0 allowed), and with
`eval.answer_judge=judge` also "judged_correct": bool | None (the answer
judge's verdict; None when its calls failed and the fallback is skip).
`build_report` aggregates them with `stepjax.rl.failures.analyze`,
overall and per dataset; `write` saves `report.json` and `records.jsonl`;
`compare` lays several reports side by side. The JSON schema is documented
field by field in docs/eval_report.md; bump SCHEMA_VERSION when a field
changes meaning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from stepjax.errors import InputError, MissingInputError
from stepjax.rl import failures as metrics

SCHEMA_VERSION = 1
REPORT_FILE = "report.json"
RECORDS_FILE = "records.jsonl"

_RECORD_TYPES: dict[str, type | tuple[type, ...]] = {
  "id": str,
  "question": str,
  "gold_answer": str,
  "answer": str,
  "correct": bool,
  "steps": (list, tuple),
  "step_labels": (list, tuple),
  "dataset": str,
}
RECORD_KEYS = tuple(_RECORD_TYPES)
# Keys a record may have, aggregated when present.
_OPTIONAL_TYPES: dict[str, type | tuple[type, ...]] = {
  "judged_correct": (bool, type(None)),
}
OPTIONAL_RECORD_KEYS = tuple(_OPTIONAL_TYPES)


def record_fields(row: Mapping[str, Any]) -> dict[str, Any]:
  """The keys of an eval row that the report aggregates (RECORD_KEYS and
  the optional keys it has)."""
  keys = RECORD_KEYS + tuple(k for k in OPTIONAL_RECORD_KEYS if k in row)
  return {k: row[k] for k in keys}


def check_record(record: Mapping[str, Any], index: int) -> None:
  """Raises ValueError naming record `index` (and its id) if malformed."""
  rid = record.get("id", "?") if isinstance(record, Mapping) else "?"
  where = f"record {index} (id={rid!r})"
  if not isinstance(record, Mapping):
    raise InputError(f"{where}: expected a dict, got {type(record).__name__}")
  missing = [k for k in RECORD_KEYS if k not in record]
  if missing:
    raise InputError(f"{where}: missing keys {missing}; need {RECORD_KEYS}")
  present = {k: t for k, t in _OPTIONAL_TYPES.items() if k in record}
  for key, types in {**_RECORD_TYPES, **present}.items():
    if not isinstance(record[key], types):
      raise InputError(
        f"{where}: {key!r} must be {types}, got {type(record[key]).__name__}"
      )
  labels = record["step_labels"]
  if any(lab not in (0, 1) or isinstance(lab, float) for lab in labels):
    raise InputError(f"{where}: step_labels must be 0/1 integers: {labels}")
  if len(record["steps"]) != len(labels):
    raise InputError(
      f"{where}: {len(record['steps'])} steps but {len(labels)} "
      "step_labels; give one label per step"
    )


def _summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The metric fields shared by the report and each per-dataset entry."""
  s = metrics.analyze(
    [r["step_labels"] for r in records], [r["correct"] for r in records]
  )
  judged = [
    bool(r["judged_correct"])
    for r in records
    if r.get("judged_correct") is not None
  ]
  return {
    "num_records": s.num_completions,
    "accuracy": s.accuracy,
    "accuracy_judged": sum(judged) / len(judged) if judged else None,
    "num_judged": len(judged),
    "step_validity": s.step_validity,
    "completion_step_validity": s.completion_step_validity,
    "mean_steps": s.mean_steps,
    "ffp": {**s.ffp_shares, "none": s.none_share},
    "ffp_counts": {**s.ffp_counts, "no_steps": s.num_no_steps},
    "mean_ffp": s.mean_ffp,
    "far": s.far,
    "far_by_ffp": s.far_by_ffp,
    "far_counts": {**s.far_counts, "undefined": s.num_far_undefined},
    "answer_vs_chain": metrics.chain_answer_agreement(
      [r["steps"][-1] if r.get("steps") else None for r in records],
      [r["answer"] for r in records],
    ),
  }


def build_report(
  records: Sequence[Mapping[str, Any]],
  meta: Mapping[str, Any] | None = None,
  skipped: Mapping[str, int] | None = None,
  answer_judge: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Aggregates per-record results into the report dict (docs/eval_report.md).

  Args:
    records: per-record dicts with RECORD_KEYS (see the module docstring).
    meta: optional JSON-serialisable run information (checkpoint, config,
      split, ...), stored as-is under "meta".
    skipped: {reason: count} of the eval records dropped as bad records
      (`data.on_bad_record=skip`), stored as
      `skipped = {"total": n, "by_reason": {...}}`.
    answer_judge: the answer judge's summary (`answer_judge.AnswerJudge
      .summary`: model, fallback policy, call counts), stored as
      "answer_judge"; None means exact match only ({"mode": "exact"}).

  Returns:
    {schema_version, num_records, accuracy, step_validity, ..., per_dataset,
    skipped, meta}.
  """
  for i, record in enumerate(records):
    check_record(record, i)
  by_dataset: dict[str, list[Mapping[str, Any]]] = {}
  for record in records:
    by_dataset.setdefault(record["dataset"], []).append(record)
  report = {"schema_version": SCHEMA_VERSION, **_summary(records)}
  report["per_dataset"] = {
    name: _summary(group) for name, group in sorted(by_dataset.items())
  }
  by_reason = {str(k): int(n) for k, n in (skipped or {}).items()}
  report["skipped"] = {"total": sum(by_reason.values()), "by_reason": by_reason}
  report["answer_judge"] = dict(answer_judge or {"mode": "exact"})
  report["meta"] = dict(meta or {})
  return report


def write(
  report: Mapping[str, Any],
  records: Sequence[Mapping[str, Any]],
  out_dir: str,
) -> tuple[str, str]:
  """Writes `out_dir/report.json` and `out_dir/records.jsonl` (local or gs://).

  Returns the two paths.
  """
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  report_path, records_path = out / REPORT_FILE, out / RECORDS_FILE
  report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
  records_path.write_text(
    "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)
  )
  return str(report_path), str(records_path)


def load_report(path: str) -> dict[str, Any]:
  """Reads a report.json, or `path/report.json` when given a directory."""
  p = epath.Path(path)
  if p.is_dir():
    p = p / REPORT_FILE
  if not p.exists():
    raise MissingInputError(
      f"no evaluation report at {p}; run `stepjax eval` with that workdir first"
    )
  report = json.loads(p.read_text())
  version = report.get("schema_version")
  if version != SCHEMA_VERSION:
    raise InputError(
      f"{p}: report schema_version {version!r}, this stepjax reads "
      f"{SCHEMA_VERSION}; regenerate it with `stepjax eval`"
    )
  return report


def load_records(path: str) -> list[dict[str, Any]]:
  """Reads a records.jsonl (or `path/records.jsonl` for a directory)."""
  p = epath.Path(path)
  if p.is_dir():
    p = p / RECORDS_FILE
  out = []
  for n, line in enumerate(p.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError as e:
      raise InputError(f"{p}:{n}: not a JSON object ({e.msg})") from None
  return out


# (header, getter) for the comparison table; shares and rates in percent.
_COLUMNS = (
  ("N", lambda r: r.get("num_records")),
  ("Acc %", lambda r: _pct(r.get("accuracy"))),
  ("Valid %", lambda r: _pct(r.get("step_validity"))),
  ("Steps", lambda r: _num(r.get("mean_steps"))),
  ("FFP early %", lambda r: _pct(r["ffp"].get("early"))),
  ("FFP mid %", lambda r: _pct(r["ffp"].get("mid"))),
  ("FFP late %", lambda r: _pct(r["ffp"].get("late"))),
  ("No fail %", lambda r: _pct(r["ffp"].get("none"))),
  ("FAR early %", lambda r: _pct(r["far_by_ffp"].get("early"))),
  ("FAR mid %", lambda r: _pct(r["far_by_ffp"].get("mid"))),
  ("FAR late %", lambda r: _pct(r["far_by_ffp"].get("late"))),
)


def _pct(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
  return "-" if x is None else f"{x:.2f}"


def compare(
  reports: Mapping[str, Mapping[str, Any]],
  fmt: str = "markdown",
  per_dataset: bool = False,
) -> str:
  """Side-by-side table of several reports, one row per run.

  Args:
    reports: run name -> report dict (as from `build_report`/`load_report`).
    fmt: "markdown" (a GitHub table) or "plain" (space-aligned columns).
    per_dataset: also add one accuracy column per dataset seen in any run.

  Returns:
    The table as text; missing values print as "-".
  """
  if fmt not in ("markdown", "plain"):
    raise InputError(f"compare: fmt must be 'markdown' or 'plain', not {fmt!r}")
  columns = list(_COLUMNS)
  if any(r.get("accuracy_judged") is not None for r in reports.values()):
    columns.insert(
      2, ("Acc judged %", lambda r: _pct(r.get("accuracy_judged")))
    )
  if per_dataset:
    names = sorted({d for r in reports.values() for d in r["per_dataset"]})
    for d in names:
      columns.append(
        (
          f"{d} acc %",
          lambda r, d=d: _pct(r["per_dataset"].get(d, {}).get("accuracy")),
        )
      )
  header = ["Run"] + [c[0] for c in columns]
  rows = [
    [name] + [str(get(report)) for _, get in columns]
    for name, report in reports.items()
  ]
  if fmt == "markdown":
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * len(columns)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
  widths = [
    max(len(row[i]) for row in [header] + rows) for i in range(len(header))
  ]
  fmt_row = lambda row: "  ".join(
    cell.ljust(w) if i == 0 else cell.rjust(w)
    for i, (cell, w) in enumerate(zip(row, widths))
  ).rstrip()
  return "\n".join(fmt_row(row) for row in [header] + rows) + "\n"
