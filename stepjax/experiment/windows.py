r"""Training-batch metrics averaged over windows of RL steps, as a table.

  python -m stepjax.experiment.windows WORKDIR \
      [--windows=0-24,25-74,75-149] [--seeds=0,1] [--metrics=reward,kl] \
      [--runs=grpo,mrpo]

For every run of a grid (WORKDIR/runs/NAME/seed_S/metrics.jsonl, RL
phase) and every window of RL steps (0-based, both ends included): the
mean over the window's logged steps of each metric, per seed, then the
mean over the seeds that logged it. Prints a markdown table, one row per
run (--runs, in that order; default: every run, sorted) and window;
"-" where no seed logged the metric in that window (e.g. label error
rates of a verifier-labelled run). The default metrics are
the batch's reward, accuracy and step validity (a hybrid's by its own
labels), how wrong its step labels were against the verifier, the share
it abstained on, and the KL to the reference policy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from stepjax.errors import InputError
from stepjax.train import metrics as metrics_lib

DEFAULT_WINDOWS = "0-24,25-74,75-149"
DEFAULT_METRICS = (
  "reward",
  "accuracy",
  "step_validity",
  "label_false_invalid_share",
  "label_false_valid_share",
  "label_used_false_invalid_share",
  "label_used_false_valid_share",
  "label_abstained_share",
  "kl",
)

Window = tuple[int, int]


def parse_windows(text: str) -> list[Window]:
  """'0-24,25-74' -> [(0, 24), (25, 74)]; InputError names a bad one."""
  out = []
  for part in text.split(","):
    first, sep, last = part.strip().partition("-")
    try:
      window = (int(first), int(last))
    except ValueError:
      window = None
    if not sep or window is None or window[0] < 0 or window[1] < window[0]:
      raise InputError(
        f"windows: {part.strip()!r} is not FIRST-LAST with 0 <= FIRST <= "
        "LAST (RL steps, 0-based, both included), e.g. 0-24,25-74"
      )
    out.append(window)
  return out


def run_names(workdir: str, runs: Sequence[str] | None = None) -> list[str]:
  """`runs` in that order (each must exist), else every directory under
  WORKDIR/runs, sorted."""
  runs_dir = epath.Path(workdir) / "runs"
  if not runs_dir.is_dir():
    raise InputError(
      f"windows: {workdir} has no runs/ directory; pass the --workdir of a "
      "`stepjax experiment` grid"
    )
  present = sorted(p.name for p in runs_dir.iterdir() if p.is_dir())
  if runs is None:
    return present
  missing = [n for n in runs if n not in present]
  if missing:
    raise InputError(
      f"windows: no run {', '.join(missing)} under {runs_dir}; it holds "
      + (", ".join(present) or "none")
    )
  return list(runs)


def window_means(
  records: Sequence[dict[str, Any]], windows: Sequence[Window], metric: str
) -> list[float | None]:
  """Per window, the mean of `metric` over the RL records whose step lies
  in it (None where no record there has a finite value)."""
  out = []
  for first, last in windows:
    values = [
      float(r[metric])
      for r in records
      if first <= r["step"] <= last
      and r.get(metric) is not None
      and np.isfinite(float(r[metric]))
    ]
    out.append(float(np.mean(values)) if values else None)
  return out


def table(
  workdir: str,
  windows: Sequence[Window],
  metrics: Sequence[str] = DEFAULT_METRICS,
  seeds: Sequence[int] | None = None,
  runs: Sequence[str] | None = None,
) -> str:
  """The markdown table (see the module docstring)."""
  rows = []
  for name in run_names(workdir, runs):
    per_seed = []
    used_seeds = []
    for seed, d in _seed_dirs(epath.Path(workdir) / "runs" / name):
      if seeds is not None and seed not in seeds:
        continue
      if recs := metrics_lib.read_rl_metrics(str(d)):
        per_seed.append(recs)
        used_seeds.append(seed)
    if not per_seed:
      continue
    # cell[metric][window] = mean over the seeds with a value there
    cells = {}
    for m in metrics:
      by_seed_W = [window_means(recs, windows, m) for recs in per_seed]
      cells[m] = [
        _mean([s[w] for s in by_seed_W if s[w] is not None])
        for w in range(len(windows))
      ]
    seeds_text = ",".join(str(s) for s in used_seeds)
    for w, (first, last) in enumerate(windows):
      values = [_fmt(cells[m][w]) for m in metrics]
      rows.append(
        f"| {name} | {seeds_text} | {first}-{last} | "
        + " | ".join(values)
        + " |"
      )
  if not rows:
    raise InputError(
      f"windows: no run under {workdir}/runs has RL metrics"
      + (f" for seeds {list(seeds)}" if seeds is not None else "")
      + "; train the grid first"
    )
  header = "| run | seeds | RL steps | " + " | ".join(metrics) + " |"
  rule = "|---|---|---|" + "---:|" * len(metrics)
  return "\n".join([header, rule, *rows]) + "\n"


def _seed_dirs(run_dir: epath.Path) -> list[tuple[int, epath.Path]]:
  """(seed, directory) of a run's seed_S directories, by seed (other
  entries left out)."""
  found = []
  for d in run_dir.glob("seed_*"):
    suffix = d.name.removeprefix("seed_")
    if suffix.isdigit():
      found.append((int(suffix), d))
  return sorted(found)


def _mean(values: Sequence[float]) -> float | None:
  return float(np.mean(values)) if values else None


def _fmt(x: float | None) -> str:
  return "-" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m stepjax.experiment.windows",
    description="Training metrics of a grid's runs, averaged over windows "
    "of RL steps, as a markdown table.",
  )
  parser.add_argument("workdir", help="the experiment's --workdir")
  parser.add_argument("--windows", default=DEFAULT_WINDOWS)
  parser.add_argument(
    "--metrics",
    default=",".join(DEFAULT_METRICS),
    help="comma-separated metrics.jsonl keys",
  )
  parser.add_argument(
    "--seeds", default=None, help="comma-separated seeds (default: all)"
  )
  parser.add_argument(
    "--runs", default=None, help="comma-separated runs, in table order"
  )
  args = parser.parse_args(argv)
  try:
    runs = args.runs.split(",") if args.runs else None
    windows = parse_windows(args.windows)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
      raise InputError("windows: --metrics names no metric")
    seeds = None
    if args.seeds is not None:
      try:
        seeds = [int(s) for s in args.seeds.split(",")]
      except ValueError:
        raise InputError(
          f"windows: --seeds={args.seeds} is not comma-separated integers"
        ) from None
    print(table(args.workdir, windows, metrics, seeds, runs), end="")
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
