"""PNG figures of evaluation reports and training curves (matplotlib, Agg).

- `plot_ffp`: the paper's failure-position figure: for each run (method), a
  group of three bars with the share of failing completions whose First
  Failure Point is early / mid / late; the no-failure share is printed under
  each group's name.
- `plot_far`: Failure Accumulation Rate against FFP bin, one line per run.
  Both take optional (low, high) intervals drawn as error bars.
- `plot_bands`: lines with shaded bands (mean over seeds and its spread),
  one panel per metric, one colour per run (experiment grids).
- `plot_curves`: scalar metrics from `metrics.jsonl` over training steps,
  one panel per metric, phases (sft / rl / eval ...) told apart by colour
  for a single run, and by line style when several runs are overlaid (runs
  then take the colours).

Reports are the dicts of `stepjax.eval.report`; curves are the records of
`stepjax.train.metrics.read_metrics`. Every function writes one PNG and
returns its path; parent directories are created.

Figures are `matplotlib.figure.Figure` objects rendered by the Agg canvas,
never pyplot: no display, no global figure state, safe in threads and tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import matplotlib.figure
import numpy as np
from etils import epath

BINS = ("early", "mid", "late")
BIN_LABELS = ("Early (0-1/3)", "Mid (1/3-2/3)", "Late (2/3-1)")
BIN_COLORS = ("#c0392b", "#e67e22", "#f1c40f")
PHASE_STYLES = ("-", "--", ":", "-.")
DEFAULT_CURVE_METRICS = ("reward", "accuracy", "step_validity")
_DPI = 120


def _figure(width: float, height: float) -> matplotlib.figure.Figure:
  return matplotlib.figure.Figure(figsize=(width, height))


def save_png(fig: matplotlib.figure.Figure, path: str, dpi: int = _DPI) -> str:
  """Writes `fig` as a PNG to `path` (local or gs://), creating the parent
  directory; returns the path."""
  p = epath.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  with p.open("wb") as f:
    fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
  return str(p)


def label_bars(ax, bars, values, tops=None, fontsize: int = 8) -> None:
  """Writes each bar's value (one decimal) above it; NaN values are left
  unlabelled. `tops`: where each label sits (default: the value)."""
  tops = values if tops is None else tops
  for bar, v, top in zip(bars, values, tops):
    if not math.isnan(v):
      ax.annotate(
        f"{v:.1f}",
        (bar.get_x() + bar.get_width() / 2, top),
        ha="center",
        va="bottom",
        fontsize=fontsize,
        xytext=(0, 2),
        textcoords="offset points",
      )


def _nan(x: float | None) -> float:
  return math.nan if x is None else float(x)


def _check_reports(reports: Mapping[str, Mapping[str, Any]], what: str):
  if not reports:
    raise ValueError(f"{what}: no reports given; pass at least one run")


def plot_ffp(
  reports: Mapping[str, Mapping[str, Any]],
  path: str,
  errors: Mapping[str, Mapping[str, Sequence[float] | None]] | None = None,
) -> str:
  """Grouped bars of FFP shares (% of failing completions) per run.

  Args:
    reports: run name -> report dict (uses "ffp" and "ffp_counts").
    path: output PNG path (local or gs://).
    errors: optional run name -> {bin: (low, high) share} intervals, drawn
      as error bars (e.g. bootstrap CIs of a mean over seeds).
  """
  _check_reports(reports, "plot_ffp")
  names = list(reports)
  shares_RxB = np.array(
    [[_nan(reports[n]["ffp"].get(b)) for b in BINS] for n in names]
  )
  x_R = np.arange(len(names))
  width = 0.8 / len(BINS)
  fig = _figure(max(5.0, 1.6 * len(names) + 2), 4.0)
  ax = fig.subplots()
  for j, (label, color) in enumerate(zip(BIN_LABELS, BIN_COLORS)):
    values = 100 * shares_RxB[:, j]
    yerr = None
    if errors:
      yerr = 100 * np.stack(
        [
          _error_bar(v, (errors.get(n) or {}).get(BINS[j]))
          for v, n in zip(shares_RxB[:, j], names)
        ],
        axis=1,
      )
    bars = ax.bar(
      x_R + (j - 1) * width,
      np.nan_to_num(values),
      width,
      label=label,
      color=color,
      edgecolor="black",
      linewidth=0.5,
      yerr=yerr,
      capsize=3 if yerr is not None else 0,
      error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
    )
    tops = np.nan_to_num(values) + (0 if yerr is None else yerr[1])
    label_bars(ax, bars, values, tops)
  ticks = []
  for n in names:
    none = reports[n]["ffp"].get("none")
    failed = sum(reports[n].get("ffp_counts", {}).get(b, 0) for b in BINS)
    extra = "" if none is None else f"\nno failure {100 * none:.1f}%"
    ticks.append(f"{n}{extra}\n(n failed={failed})")
  ax.set_xticks(x_R, ticks, fontsize=9)
  ax.set_ylabel("% of failing completions")
  ax.set_ylim(0, 125)  # headroom for the legend above 100 %
  ax.set_yticks(np.arange(0, 101, 20))
  ax.set_title("First Failure Point (position of the first invalid step)")
  ax.legend(fontsize=8, loc="upper center", ncol=len(BINS), frameon=False)
  ax.grid(axis="y", alpha=0.3)
  ax.set_axisbelow(True)
  return save_png(fig, path)


def plot_far(
  reports: Mapping[str, Mapping[str, Any]],
  path: str,
  errors: Mapping[str, Mapping[str, Sequence[float] | None]] | None = None,
) -> str:
  """FAR (% of invalid steps after the first failure) per FFP bin and run.

  Args:
    reports: run name -> report dict (uses "far_by_ffp"; "far_counts" goes
      into the legend as n=early/mid/late).
    path: output PNG path.
    errors: optional run name -> {bin: (low, high) FAR} intervals, drawn as
      error bars (runs then shift sideways a little so bars stay apart).
  """
  _check_reports(reports, "plot_far")
  fig = _figure(6.0, 4.0)
  ax = fig.subplots()
  x_B = np.arange(len(BINS))
  for i, (name, report) in enumerate(reports.items()):
    far_B = np.array([_nan(report["far_by_ffp"].get(b)) for b in BINS])
    counts = report.get("far_counts", {})
    n = "/".join(str(counts.get(b, "?")) for b in BINS)
    label = f"{name} (n={n})"
    if not errors:
      ax.plot(x_B, 100 * far_B, marker="o", linewidth=2, label=label)
      continue
    intervals = errors.get(name) or {}
    yerr_2xB = 100 * np.stack(
      [_error_bar(v, intervals.get(b)) for v, b in zip(far_B, BINS)], axis=1
    )
    shift = 0.06 * (i - (len(reports) - 1) / 2)
    ax.errorbar(
      x_B + shift,
      100 * far_B,
      yerr=yerr_2xB,
      marker="o",
      linewidth=2,
      capsize=3,
      label=label,
    )
  ax.set_xticks(x_B, BIN_LABELS)
  ax.set_xlim(-0.3, len(BINS) - 0.7)
  ax.set_ylim(0, 105)
  ax.set_xlabel("First Failure Point stage")
  ax.set_ylabel("FAR: % invalid steps after the first failure")
  ax.set_title("Failure Accumulation Rate vs First Failure Point")
  ax.legend(fontsize=8, title="run (completions per stage)", title_fontsize=8)
  ax.grid(alpha=0.3)
  return save_png(fig, path)


def plot_curves(
  runs: Mapping[str, Sequence[Mapping[str, Any]]],
  path: str,
  metrics: Sequence[str] = DEFAULT_CURVE_METRICS,
) -> str:
  """Metrics over training steps from one or more runs' metrics.jsonl.

  Args:
    runs: run name -> list of {"step", "phase", <metric>: float} records.
    path: output PNG path.
    metrics: metric names, one panel each; names that no run logged are
      skipped (all missing is an error naming the available ones).
  """
  if not runs:
    raise ValueError("plot_curves: no runs given; pass at least one run")
  logged = {k for recs in runs.values() for r in recs for k in r}
  panels = [m for m in metrics if m in logged]
  if not panels:
    available = sorted(logged - {"step", "phase"})
    raise ValueError(
      f"plot_curves: none of {list(metrics)} was logged; available "
      f"metrics: {available}"
    )
  phases = []
  for recs in runs.values():
    for r in recs:
      if r.get("phase", "") not in phases:
        phases.append(r.get("phase", ""))
  single = len(runs) == 1
  colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
  fig = _figure(7.0, 2.6 * len(panels))
  axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)
  for ax, metric in zip(axes[:, 0], panels):
    for i, (name, recs) in enumerate(runs.items()):
      for j, phase in enumerate(phases):
        pts = sorted(
          (r["step"], r[metric])
          for r in recs
          if r.get("phase", "") == phase and metric in r
        )
        if not pts:
          continue
        steps, values = zip(*pts)
        color = colors[(j if single else i) % len(colors)]
        style = "-" if single else PHASE_STYLES[j % len(PHASE_STYLES)]
        label = phase if single else f"{name} [{phase}]"
        ax.plot(
          steps,
          values,
          style,
          color=color,
          label=label,
          linewidth=1.6,
          marker="o" if len(pts) <= 20 else None,
          markersize=3,
        )
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
  axes[-1, 0].set_xlabel("step")
  title = next(iter(runs)) if single else "comparison: " + ", ".join(runs)
  axes[0, 0].set_title(f"Training curves ({title})")
  return save_png(fig, path)


def plot_bands(
  panels: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
  path: str,
  xlabel: str = "step",
  title: str = "",
) -> str:
  """Lines with shaded bands: one panel per metric, one colour per run.

  Args:
    panels: metric -> run name -> {"x", "mean", "low", "high"} sequences of
      one length (e.g. the mean over seeds and its min-max band). Runs keep
      their colour in every panel (by first appearance).
    path: output PNG path.
  """
  if not panels:
    raise ValueError("plot_bands: no panels given; pass at least one metric")
  runs: list[str] = []
  for series in panels.values():
    runs += [name for name in series if name not in runs]
  colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
  color = {name: colors[i % len(colors)] for i, name in enumerate(runs)}
  cols = 2 if len(panels) > 4 else 1  # many metrics: two columns
  rows = math.ceil(len(panels) / cols)
  fig = _figure(6.0 * cols, 2.4 * rows)
  fig.set_layout_engine("constrained")  # keeps the suptitle close
  axes = fig.subplots(rows, cols, sharex=True, squeeze=False).ravel()
  for ax in axes[len(panels) :]:
    ax.set_visible(False)
  for i, (ax, (metric, series)) in enumerate(zip(axes, panels.items())):
    for name, s in series.items():
      x = np.asarray(s["x"], float)
      mean = np.asarray(s["mean"], float)
      ax.plot(
        x,
        mean,
        color=color[name],
        linewidth=1.6,
        label=name,
        marker="o" if len(x) <= 12 else None,
        markersize=3,
      )
      ax.fill_between(
        x,
        np.asarray(s["low"], float),
        np.asarray(s["high"], float),
        color=color[name],
        alpha=0.2,
        linewidth=0,
      )
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if i == 0:
      ax.legend(fontsize=7, loc="best")
    if i >= len(panels) - cols:
      ax.set_xlabel(xlabel)
      ax.xaxis.set_tick_params(labelbottom=True)
  if title:
    fig.suptitle(title)
  return save_png(fig, path)


def _error_bar(value: float, interval: Sequence[float] | None) -> np.ndarray:
  """[below, above] distances of a (low, high) interval from `value` for
  matplotlib's `yerr`; zeros without an interval."""
  if interval is None or math.isnan(value):
    return np.zeros(2)
  return np.array(
    [max(value - interval[0], 0.0), max(interval[1] - value, 0.0)]
  )


def render_all(
  reports: Mapping[str, Mapping[str, Any]],
  out_dir: str,
  runs: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> list[str]:
  """Writes ffp.png, far.png and (if any run logged metrics) curves.png."""
  out = epath.Path(out_dir)
  paths = [
    plot_ffp(reports, str(out / "ffp.png")),
    plot_far(reports, str(out / "far.png")),
  ]
  runs = {k: v for k, v in (runs or {}).items() if v}
  if runs:
    logged = {k for recs in runs.values() for r in recs for k in r}
    if logged & set(DEFAULT_CURVE_METRICS):
      paths.append(plot_curves(runs, str(out / "curves.png")))
  return paths


RL_CURVE_METRICS = (
  "reward",
  "reward_answer",
  "reward_process",
  "accuracy",
  "step_validity",
  "ffp_early",
  "kl",
  "entropy",
)


def plot_smoothed_curves(
  records: Sequence[Mapping[str, Any]],
  path: str,
  phase: str = "rl",
  metrics: Sequence[str] = RL_CURVE_METRICS,
  window: int = 10,
) -> str:
  """One run's per-step metrics of `phase`, smoothed: a trailing moving
  average over `window` steps with a band of +-1 moving std."""
  panels = {}
  for metric in metrics:
    pts = sorted(
      (r["step"], r[metric])
      for r in records
      if r.get("phase") == phase and r.get(metric) is not None
    )
    if not pts:
      continue
    x, v = (np.asarray(a, float) for a in zip(*pts))
    mean, std = _moving_stats(v, window)
    x = x - x[0] + 1
    panels[metric] = {
      phase: {"x": x, "mean": mean, "low": mean - std, "high": mean + std}
    }
  if not panels:
    raise ValueError(
      f"plot_smoothed_curves: no {phase} records with any of {list(metrics)}"
    )
  return plot_bands(
    panels,
    path,
    xlabel=f"{phase} step",
    title=f"{phase} curves (moving average over {window} steps, +-1 std)",
  )


def _moving_stats(v: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
  """Trailing moving mean and std over up to `window` values."""
  mean = np.empty_like(v)
  std = np.empty_like(v)
  for i in range(len(v)):
    chunk = v[max(0, i - window + 1) : i + 1]
    chunk = chunk[~np.isnan(chunk)]
    mean[i] = chunk.mean() if chunk.size else np.nan
    std[i] = chunk.std() if chunk.size else np.nan
  return mean, std
