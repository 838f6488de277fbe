"""The jobs of an experiment grid, their directories and their state.

  WORKDIR/sft/seed_S          SFT warm start of seed S (train.steps=0)
  WORKDIR/runs/NAME/seed_S    run NAME of seed S, from that checkpoint
  WORKDIR/logs/NAME_seedS.log its output (sft_seedS.log for the SFT)

A job is done when its `eval/final/report.json` exists; it is then skipped.
A job killed part-way resumes from the latest checkpoint in its directory
(the trainer does that). Each job directory holds the resolved job config
(`config.json`, see config_io.py) and its wall time (`timing.json`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import ml_collections
from etils import epath

from stepjax.errors import InputError
from stepjax.experiment import config_io, spec
from stepjax.train import checkpoint

SFT = "sft"
TIMING_FILE = "timing.json"


@dataclasses.dataclass(frozen=True, eq=False)
class Job:
  """One training of the grid: the SFT of a seed, or a run of a seed."""

  run: str  # "sft" or a run name
  seed: int
  dir: str
  log: str
  config: ml_collections.ConfigDict

  @property
  def kind(self) -> str:
    return SFT if self.run == SFT else "rl"

  @property
  def label(self) -> str:
    return f"sft/seed_{self.seed}" if self.kind == SFT else self.run_label

  @property
  def run_label(self) -> str:
    return f"runs/{self.run}/seed_{self.seed}"


def sft_dir(workdir: str, seed: int) -> str:
  return str(epath.Path(workdir) / "sft" / f"seed_{seed}")


def run_dir(workdir: str, name: str, seed: int) -> str:
  return str(epath.Path(workdir) / "runs" / name / f"seed_{seed}")


def log_path(workdir: str, name: str, seed: int) -> str:
  return str(epath.Path(workdir) / "logs" / f"{name}_seed{seed}.log")


def checkpoint_dir(job_dir: str) -> str:
  return str(epath.Path(job_dir) / "checkpoints")


def sft_config(exp: spec.Experiment, seed: int) -> ml_collections.ConfigDict:
  config = spec.apply_overrides(exp.base, {})
  config.seed = seed
  config.train.steps = 0
  config.lock()
  return config


def run_config(
  exp: spec.Experiment, name: str, seed: int, workdir: str
) -> ml_collections.ConfigDict:
  config = exp.run_config(name)
  config.seed = seed
  config.sft.steps = 0
  config.init_from = checkpoint.absolute(checkpoint_dir(sft_dir(workdir, seed)))
  config.train.eval_every = exp.eval_every
  config.train.eval_before_rl = False
  config.lock()
  return config


def jobs(exp: spec.Experiment, workdir: str) -> list[Job]:
  """SFT jobs (one per seed), then the runs run by run (every seed of the
  first run, then of the next), so a grid stopped early leaves whole runs
  with all their seeds, in the order the config lists them."""
  out = [
    Job(
      SFT,
      seed,
      sft_dir(workdir, seed),
      log_path(workdir, SFT, seed),
      sft_config(exp, seed),
    )
    for seed in exp.seeds
  ]
  for name in exp.runs:
    for seed in exp.seeds:
      out.append(
        Job(
          name,
          seed,
          run_dir(workdir, name, seed),
          log_path(workdir, name, seed),
          run_config(exp, name, seed, workdir),
        )
      )
  return out


def is_done(job_dir: str) -> bool:
  return (epath.Path(job_dir) / "eval" / "final" / "report.json").exists()


def latest_checkpoint(job_dir: str) -> int | None:
  """The newest finished checkpoint step in a job directory, None if none
  (Orbax's in-progress temporary directories do not count)."""
  root = epath.Path(checkpoint_dir(job_dir))
  if not root.exists():
    return None
  steps = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
  return max(steps) if steps else None


def check_resumable(job: Job) -> None:
  """ValueError when the job directory holds a different config than the
  experiment now asks for (its results would mix two set-ups). init_from
  may differ (a moved workdir); a finished or resumed job never reads it."""
  path = epath.Path(job.dir) / config_io.CONFIG_FILE
  if not path.exists():
    return
  changed = config_io.differences(
    config_io.read(job.dir), job.config, ignore=("init_from",)
  )
  if changed:
    raise InputError(
      f"{job.dir} was trained with another config (differs in "
      f"{', '.join(changed[:5])}); delete that directory to retrain it, or "
      "use a new --workdir"
    )


def check_sft_checkpoint(workdir: str, seed: int) -> None:
  """ValueError when seed's SFT is marked done but its checkpoint is gone."""
  directory = sft_dir(workdir, seed)
  if is_done(directory) and latest_checkpoint(directory) is None:
    raise InputError(
      f"missing SFT checkpoint {checkpoint_dir(directory)} (its runs start "
      f"from it): delete {directory} and run the experiment again to "
      "retrain it"
    )


def record_timing(job: Job, wall_s: float, status: str, **extra: Any) -> None:
  """Appends one attempt to the job's timing.json; `wall_s` totals the
  attempts."""
  path = epath.Path(job.dir) / TIMING_FILE
  timing = read_timing(job.dir) or {"attempts": []}
  timing["attempts"].append(
    {"wall_s": round(wall_s, 3), "status": status, **extra}
  )
  timing["wall_s"] = round(sum(a["wall_s"] for a in timing["attempts"]), 3)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(timing, indent=2) + "\n")


def read_timing(job_dir: str) -> dict[str, Any] | None:
  path = epath.Path(job_dir) / TIMING_FILE
  return json.loads(path.read_text()) if path.exists() else None
