"""The grid's figures: PNGs in WORKDIR/plots/ (matplotlib Agg, through
`stepjax.eval.plots`).

  curves.png         RL learning curves from each run's metrics.jsonl: per
                     seed a trailing moving average, then the mean over
                     seeds (line) and the min-max over seeds (band); one
                     colour per run
  periodic_eval.png  eval accuracy and step validity against RL step (0 =
                     the SFT start, then the periodic and final evals), mean
                     over seeds with a min-max band
  ffp.png            the paper's FFP figure: early / mid / late shares of
                     the failing completions per method, the SFT start as
                     its own group, 95% bootstrap CIs as error bars
  far.png            the paper's FAR vs FFP figure, with 95% CIs
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from stepjax.eval import plots
from stepjax.experiment import grid, spec
from stepjax.train import metrics as metrics_lib

PLOTS_DIR = "plots"
CURVE_METRICS = (
  "reward",
  "reward_answer",
  "reward_process",
  "reward_length",
  "accuracy",
  "step_validity",
  "ffp_early",
  "kl",
  "entropy",
  "zero_std_groups",
)
# Plot files and their captions (publish.py links them in this order).
CAPTIONS = {
  "curves.png": "RL learning curves (mean over seeds, min-max band)",
  "periodic_eval.png": "Eval accuracy and step validity per RL step",
  "ffp.png": "First Failure Point shares per method (95% CI)",
  "far.png": "Failure Accumulation Rate vs First Failure Point (95% CI)",
}
SFT_LABEL = "SFT start"
BINS = ("early", "mid", "late")


def render(
  results: Mapping[str, Any], exp: spec.Experiment, workdir: str
) -> list[str]:
  """Writes the figures; returns their paths."""
  out = epath.Path(workdir) / PLOTS_DIR
  paths = []
  curves, window = learning_curves(exp, workdir)
  if curves:
    paths.append(
      plots.plot_bands(
        curves,
        str(out / "curves.png"),
        xlabel="RL step",
        title=f"RL training: mean over seeds of a {window}-step moving "
        "average, min-max band",
      )
    )
  paths.append(
    plots.plot_bands(
      periodic_panels(results),
      str(out / "periodic_eval.png"),
      xlabel="RL step (0 = SFT start)",
      title="Held-out eval: mean over seeds, min-max band",
    )
  )
  reports, ffp_errors, far_errors = method_reports(results)
  paths.append(plots.plot_ffp(reports, str(out / "ffp.png"), ffp_errors))
  paths.append(plots.plot_far(reports, str(out / "far.png"), far_errors))
  return paths


def learning_curves(
  exp: spec.Experiment, workdir: str
) -> tuple[dict[str, dict[str, dict]], int]:
  """(metric -> run -> band series, smoothing window) from metrics.jsonl."""
  logs = {
    name: [
      metrics_lib.read_rl_metrics(grid.run_dir(workdir, name, seed))
      for seed in exp.seeds
    ]
    for name in exp.runs
  }
  num_steps = max(
    (len(recs) for per_seed in logs.values() for recs in per_seed), default=0
  )
  window = max(1, num_steps // 15)
  panels: dict[str, dict[str, dict]] = {}
  for metric in CURVE_METRICS:
    for name, per_seed in logs.items():
      steps = sorted({r["step"] for recs in per_seed for r in recs})
      if not any(metric in r for recs in per_seed for r in recs):
        continue
      values_SxT = np.full((len(per_seed), len(steps)), np.nan)
      index = {step: t for t, step in enumerate(steps)}
      for s, recs in enumerate(per_seed):
        for r in recs:
          if metric in r:
            values_SxT[s, index[r["step"]]] = r[metric]
      smooth_SxT = np.stack([moving_average(v, window) for v in values_SxT])
      panels.setdefault(metric, {})[name] = _band(
        np.asarray(steps) + 1, smooth_SxT
      )
  return panels, window


def moving_average(values_T: np.ndarray, window: int) -> np.ndarray:
  """Trailing mean over the last `window` finite values up to each step."""
  out = np.full(values_T.shape, np.nan)
  for t in range(values_T.size):
    chunk = values_T[max(0, t - window + 1) : t + 1]
    chunk = chunk[np.isfinite(chunk)]
    if chunk.size:
      out[t] = chunk.mean()
  return out


def periodic_panels(results: Mapping[str, Any]) -> dict[str, dict]:
  panels: dict[str, dict] = {}
  for name, periodic in results["periodic"].items():
    x = np.asarray(periodic["steps"], float)
    for metric in ("accuracy", "step_validity"):
      values_SxT = np.array(
        [
          [np.nan if v is None else v for v in per_seed]
          for per_seed in periodic[metric].values()
        ],
        float,
      )
      panels.setdefault(metric, {})[name] = _band(x, values_SxT)
  return panels


def method_reports(results: Mapping[str, Any]):
  """(reports, FFP intervals, FAR intervals) per method for plot_ffp and
  plot_far: means over seeds in the report-dict layout, the SFT start as
  its own method, first."""
  reports, ffp_errors, far_errors = {}, {}, {}
  for g, entry in results["groups"].items():
    label = SFT_LABEL if g == "sft" else g
    mean, counts = entry["mean"], entry["counts"]
    reports[label] = {
      "ffp": {
        **{b: mean[f"ffp_{b}"]["value"] for b in BINS},
        "none": mean["no_failure"]["value"],
      },
      "ffp_counts": {b: int(counts[f"ffp_{b}"]["num"]) for b in BINS},
      "far_by_ffp": {b: mean[f"far_{b}"]["value"] for b in BINS},
      "far_counts": {b: int(counts[f"far_{b}"]["den"]) for b in BINS},
    }
    ffp_errors[label] = {b: mean[f"ffp_{b}"]["ci"] for b in BINS}
    far_errors[label] = {b: mean[f"far_{b}"]["ci"] for b in BINS}
  return reports, ffp_errors, far_errors


def _band(x: Sequence[float], values_SxT: np.ndarray) -> dict[str, np.ndarray]:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
    return {
      "x": np.asarray(x, float),
      "mean": np.nanmean(values_SxT, axis=0),
      "low": np.nanmin(values_SxT, axis=0),
      "high": np.nanmax(values_SxT, axis=0),
    }
