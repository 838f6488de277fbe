"""Per-step metrics: JSONL and TensorBoard files, and a progress line.

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged
step (`{"step": ..., "phase": ..., <name>: <float>}`); TensorBoard scalars
go under `tb/`. On a TTY a tqdm bar shows the key numbers (and the step's
judge totals, when a judge labels steps); otherwise a plain log line is
printed every `log_every` steps.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

KEY_METRICS = ("reward", "accuracy", "step_validity", "loss", "kl")
# (shown as, metric judge_<key>): judge totals of the step, when it has any.
JUDGE_SUMMARY = (
  ("calls", "calls"),
  ("cached", "cache_hits"),
  ("retries", "retries"),
  ("fallbacks", "fallbacks"),
)


def _to_float(value: Any) -> float | None:
  try:
    out = float(np.asarray(value))
  except (TypeError, ValueError):
    return None
  return out if math.isfinite(out) else None


def _judge_summary(scalars: dict[str, float]) -> str:
  """The step's judge totals for the progress line ("" without a judge)."""
  if "judge_calls" not in scalars:
    return ""
  parts = [
    f"{name}={int(scalars.get(f'judge_{key}', 0))}"
    for name, key in JUDGE_SUMMARY
  ]
  causes = [
    f"{k[len('judge_fallbacks_') :]}={int(v)}"
    for k, v in scalars.items()
    if k.startswith("judge_fallbacks_") and v
  ]
  if causes:
    parts[-1] += f" ({' '.join(causes)})"
  return " judge " + " ".join(parts)


def _tensorboardx():
  """tensorboardX, imported without torch where torch is not loaded yet.

  tensorboardX's writer imports torch when it is installed (~2 s), only to
  accept torch tensors; the trainer writes Python floats. While it loads,
  `import torch` is made to fail (a None entry in sys.modules), so its
  try/except falls back to numpy; torch imports normally afterwards.
  """
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    import tensorboardX

    return tensorboardX
  sys.modules["torch"] = None  # type: ignore[assignment]
  try:
    import tensorboardX
  finally:
    del sys.modules["torch"]
  return tensorboardX


class MetricsWriter:
  """Writes scalars to `workdir/metrics.jsonl` and `workdir/tb/`."""

  def __init__(
    self,
    workdir: str,
    total_steps: int,
    enabled: bool | None = None,
    log_every: int = 1,
  ):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.workdir = epath.Path(workdir)
    self._bar = None
    self._tb = None
    self.total = total_steps
    self.log_every = max(int(log_every), 1)
    if not self.enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._jsonl = (self.workdir / "metrics.jsonl").open("a")
    try:
      self._tb = _tensorboardx().SummaryWriter(str(self.workdir / "tb"))
    except Exception as e:  # TensorBoard is optional at run time.
      logging.warning("TensorBoard writer unavailable (%s); JSONL only.", e)
    if sys.stderr.isatty():
      import tqdm

      self._bar = tqdm.tqdm(total=total_steps, dynamic_ncols=True)

  def write(self, step: int, phase: str, scalars: dict[str, Any]) -> dict:
    """Logs the finite scalars of `scalars`; returns what was written."""
    clean = {
      k: v
      for k, v in ((k, _to_float(v)) for k, v in scalars.items())
      if v is not None
    }
    if not self.enabled:
      return clean
    record = {"step": int(step), "phase": phase, **clean}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for name, value in clean.items():
        self._tb.add_scalar(f"{phase}/{name}", value, step)
    summary = " ".join(f"{k}={clean[k]:.3f}" for k in KEY_METRICS if k in clean)
    summary += _judge_summary(clean)
    if self._bar is not None:
      self._bar.set_description(f"{phase} {summary}")
      self._bar.n = int(step)
      self._bar.refresh()
    elif step % self.log_every == 0 or step == self.total - 1:
      print(f"step {step}/{self.total} [{phase}] {summary}", flush=True)
    return clean

  def drop_from(self, step: int) -> None:
    """Forgets records of steps >= `step` (a resumed run redoes them)."""
    if not self.enabled:
      return
    self._jsonl.close()
    path = self.workdir / "metrics.jsonl"
    kept = [r for r in read_metrics(str(self.workdir)) if r["step"] < step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    self._jsonl = path.open("a")

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    if self._bar is not None:
      self._bar.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All records of a run's metrics.jsonl (for plots and tests)."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def read_rl_metrics(workdir: str) -> list[dict[str, Any]]:
  """The RL-phase records of a run's metrics.jsonl (SFT steps left out)."""
  return [r for r in read_metrics(workdir) if r.get("phase") == "rl"]
