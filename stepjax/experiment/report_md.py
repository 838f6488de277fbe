"""WORKDIR/results.md: the tables of results.json for people.

Rendered from the results dict alone (results.py), so the same results.json
always gives the same text. Headings start at level 3, so the file can be
pasted under a README's "##" section (publish.py does that).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# (metric, column header) of the tables; shares and rates in percent.
_MAIN = (
  ("accuracy", "Accuracy"),
  ("step_validity", "Step validity"),
  ("ffp_early", "FFP early"),
  ("ffp_mid", "FFP mid"),
  ("ffp_late", "FFP late"),
  ("early_failure", "Early failures, % of all"),
  ("far", "FAR"),
  ("answer_contradicts_chain", "Answer contradicts chain"),
)
_PER_SEED = (
  ("accuracy", "Acc"),
  ("step_validity", "Valid"),
  ("ffp_early", "FFP early"),
  ("far", "FAR"),
)


def render(results: Mapping[str, Any]) -> str:
  """The markdown text of `results` (see results.py for its fields)."""
  setup = results["experiment"]
  groups = results["groups"]
  runs = [g for g in groups if g != "sft"]
  lines = [
    f"### Experiment grid: {len(runs)} runs x {len(setup['seeds'])} seeds"
  ]
  lines += ["", _summary(setup, runs), ""]
  lines += ["| Run | Overrides of the base config |", "|---|---|"]
  for name in runs:
    lines.append(f"| {name} | `{setup['runs'][name]['overrides'] or '-'}` |")
  lines += [
    "",
    "#### Mean over seeds, % (95% CI)",
    "",
    *_table(
      ["SFT start", *runs],
      [groups["sft"]["mean"]] + [groups[r]["mean"] for r in runs],
      signed=False,
    ),
    "",
    "#### Change from the SFT start (same seed, same scans), points (95% CI)",
    "",
    *_table(runs, [groups[r]["change_from_sft"] for r in runs], signed=True),
  ]
  if results["pairs"]:
    lines += [
      "",
      "#### Paired differences a - b (same seed, same scans), points (95% CI)",
      "",
      *_pairs_table(results["pairs"]),
      "",
      "FFP early, relative: (a - b) / b of the early-failure share, in %.",
    ]
  lines += ["", "#### Per seed, %", "", *_per_seed_table(results, runs)]
  lines += ["", "#### Cost and label quality", "", *_cost(results, runs)]
  lines += [
    "",
    "Reproduce (finished runs are skipped, killed ones resume):",
    "",
    f"    {setup['command']}",
    "",
  ]
  return "\n".join(lines)


def _run_sizes(setup: Mapping[str, Any], runs: Sequence[str]) -> str:
  """RL steps x prompts per step of the runs, and their sampling compute."""
  g = setup["group_size"]
  per_run = {name: setup["runs"][name] for name in runs}
  sizes = {(r["rl_steps"], r.get("prompts_per_step")) for r in per_run.values()}
  completions = {r["completions"] for r in per_run.values()}
  if len(sizes) == 1:
    ((steps, prompts),) = sizes
    shape = f"Each run: {steps} RL steps of {prompts} prompts x G={g}"
  else:
    listed = ", ".join(
      f"{name} {r['rl_steps']} x {r.get('prompts_per_step')}"
      for name, r in per_run.items()
    )
    shape = f"RL steps x prompts per step (G={g}): {listed}"
  if len(completions) == 1:
    each = completions.pop()
    return f"{shape} ({each} completions per run: equal sampling compute)."
  return (
    f"{shape}; completions per run differ: "
    + ", ".join(f"{name} {r['completions']}" for name, r in per_run.items())
    + "."
  )


def _summary(setup: Mapping[str, Any], runs: Sequence[str]) -> str:
  seeds = ", ".join(str(s) for s in setup["seeds"])
  periodic = (
    f", and every {setup['eval_every']} RL step(s)"
    if setup["eval_every"]
    else ""
  )
  return (
    f"{setup['dataset']} with the `{setup['model']}` model. Seeds {seeds} "
    f"({len(setup['seeds'])}); per seed one SFT warm start "
    f"({setup['sft_steps']} steps) that every run of the seed starts from. "
    f"{_run_sizes(setup, runs)} Evaluated greedily on {setup['eval_scans']} "
    f"held-out scans per seed (one set per seed) at the end{periodic}. "
    "FFP shares are of the failing completions; early failures, % of all: "
    "completions whose first failure is early, of every completion with "
    "steps; FAR is the share of invalid steps after the first failure. "
    "CIs: hierarchical bootstrap "
    f"({setup['bootstrap_samples']} replicates, seed "
    f"{setup['bootstrap_seed']}: seeds resampled, then scans within a seed, "
    "the same scans for both sides of a paired difference), 95% "
    "percentile intervals. Baseline of the paired differences: "
    f"{setup['baseline']}."
  )


def _table(names, entries, signed: bool) -> list[str]:
  header = "| | " + " | ".join(h for _, h in _MAIN) + " |"
  lines = [header, "|---|" + "---:|" * len(_MAIN)]
  for name, entry in zip(names, entries):
    cells = [_cell(entry[m], signed) for m, _ in _MAIN]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def _pairs_table(pairs) -> list[str]:
  cols = _MAIN[:3] + (("ffp_early_relative", "FFP early, relative %"),)
  cols += _MAIN[3:]
  lines = [
    "| a - b | " + " | ".join(h for _, h in cols) + " |",
    "|---|" + "---:|" * len(cols),
  ]
  for p in pairs:
    cells = [
      _cell(p["ffp_early_relative"], True)
      if m == "ffp_early_relative"
      else _cell(p["diff"][m], True)
      for m, _ in cols
    ]
    lines.append(f"| {p['a']} - {p['b']} | " + " | ".join(cells) + " |")
  return lines


def _per_seed_table(results, runs) -> list[str]:
  seeds = [str(s) for s in results["experiment"]["seeds"]]
  header = "| | seed | " + " | ".join(h for _, h in _PER_SEED) + " |"
  lines = [header, "|---|---:|" + "---:|" * len(_PER_SEED)]
  for g in ["sft", *runs]:
    name = "SFT start" if g == "sft" else g
    for s in seeds:
      values = results["groups"][g]["per_seed"][s]
      cells = [_pct(values[m]) for m, _ in _PER_SEED]
      lines.append(f"| {name} | {s} | " + " | ".join(cells) + " |")
  return lines


def _cost_cell(counter: dict | None) -> str:
  """A judge counter's cell: total / per step, or a share's mean per step
  in % (a share summed over steps means nothing)."""
  if not counter:
    return " - |"
  if counter["total"] is None:
    return f" {100 * counter['per_step']:.1f}% |"
  return f" {counter['total']:.1f} / {counter['per_step']:.2f} |"


def _cost(results, runs) -> list[str]:
  setup = results["experiment"]
  counters = [results["judge"].get(r, {}) for r in runs]
  keys = sorted({k for c in counters for k in c})
  # results.py gives a share (no meaningful sum over steps) no total.
  shares = {k for c in counters for k, v in c.items() if v["total"] is None}
  header = "| | wall time per seed (mean) |"
  header += "".join(
    f" {k} (mean per step) |" if k in shares else f" {k} (total / per step) |"
    for k in keys
  )
  lines = [header, "|---|---:|" + "---:|" * len(keys)]
  for g in ["sft", *runs]:
    walls = [w for w in results["groups"][g]["wall_s"].values() if w]
    wall = duration(sum(walls) / len(walls)) if walls else "-"
    row = f"| {'SFT' if g == 'sft' else g} | {wall} |"
    for k in keys:
      row += _cost_cell(results["judge"].get(g, {}).get(k))
    lines.append(row)
  lines.append("")
  grid_wall = setup.get("grid_wall_s")
  lines.append(
    "Grid wall time: "
    + (duration(grid_wall) if grid_wall else "-")
    + f" ({setup.get('invocations', 0)} invocation(s) that trained)."
  )
  if not keys:
    lines.append(
      "No run logged judge_* counters or label errors (process labels from "
      + ", ".join(sorted({setup["runs"][r]["process_source"] for r in runs}))
      + ": no judge calls)."
    )
  return lines


def duration(seconds: float) -> str:
  """41s, 2m41s, 1h02m."""
  s = int(round(seconds))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _cell(estimate: Mapping[str, Any], signed: bool) -> str:
  value, ci = estimate.get("value"), estimate.get("ci")
  if value is None:
    return "-"
  text = _pct(value, signed)
  if ci:
    text += f" [{_pct(ci[0], signed)}, {_pct(ci[1], signed)}]"
  return text


def _pct(x: float | None, signed: bool = False) -> str:
  if x is None:
    return "-"
  return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"
