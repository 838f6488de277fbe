"""Trains the jobs of an experiment grid: skips finished ones, resumes
partial ones, `parallel` at a time, and prints one line per start/finish.

With parallel = 1 each job trains in this process, one after another. With
parallel > 1 each job is a worker subprocess (`python -m
stepjax.experiment.worker JOB_DIR`), its output in WORKDIR/logs/. A run of
seed S starts once seed S's SFT job is done; if that SFT job failed, its
runs are reported as blocked and the other seeds go on. Errors a user can
cause (a changed config in an existing job directory, a missing SFT
checkpoint, a bad job config) fail before any job starts.

Each job's wall time goes to its timing.json (grid.py); the grid's to
WORKDIR/grid.json (one entry per invocation that trained something).

Throughput on the 2-core CPU machine (2 runs x 2 seeds of the synthmed
model, 60 SFT + 30 RL steps, 32 eval scans, warm compilation cache, other
work on the cores): parallel=1 took 302 s (72 jobs/h), parallel=2 194 s
(112 jobs/h, 1.56x), parallel=2 with single_thread_workers 242 s (89
jobs/h). A job keeps about one core busy (host-side Python between small
XLA calls), so two workers use both cores; pinning XLA to one thread each
only slows their matmuls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
import traceback
from typing import Any, TextIO

from absl import logging
from etils import epath

from stepjax import config_checks, jobs
from stepjax.experiment import compile_cache, config_io, grid, report_md, spec

GRID_FILE = "grid.json"
# XLA on one thread per worker (single_thread_workers): for more workers
# than cores; slower than the default with parallel = cores (see above).
SINGLE_THREAD_XLA = (
  "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
_POLL_S = 0.5


@dataclasses.dataclass
class Outcome:
  """What happened to one job in this invocation."""

  job: grid.Job
  status: str  # skipped | trained | failed | blocked
  wall_s: float = 0.0
  detail: str = ""


def run_grid(
  exp: spec.Experiment, workdir: str, out: TextIO | None = None
) -> list[Outcome]:
  """Trains what is not done yet; returns one Outcome per job, in order."""
  out = out or sys.stdout
  jobs = grid.jobs(exp, workdir)
  for job in jobs:
    grid.check_resumable(job)
    config_checks.check(job.config)
  for seed in exp.seeds:
    grid.check_sft_checkpoint(workdir, seed)
  outcomes = {
    j.label: Outcome(j, "skipped") for j in jobs if grid.is_done(j.dir)
  }
  todo = [j for j in jobs if j.label not in outcomes]
  _say(
    out,
    f"experiment: {len(exp.seeds)} SFT + {len(exp.runs)} runs x "
    f"{len(exp.seeds)} seeds = {len(jobs)} jobs; {len(outcomes)} done "
    f"already, {len(todo)} to train, {exp.parallel} at a time",
  )
  if not todo:
    return [outcomes[j.label] for j in jobs]
  cache_dir = str(epath.Path(workdir).absolute() / compile_cache.CACHE_DIR)
  cache = (
    compile_cache.enabled(cache_dir)
    if exp.compilation_cache
    else contextlib.nullcontext()
  )
  start = time.monotonic()
  with cache:
    scheduler = _Scheduler(exp, workdir, todo, out, cache_dir)
    outcomes.update(scheduler.run())
  _record_invocation(workdir, exp, time.monotonic() - start, outcomes)
  return [outcomes[j.label] for j in jobs]


class _Scheduler:
  """Starts ready jobs up to `parallel`, polls them, reports progress."""

  def __init__(self, exp, workdir, todo, out, cache_dir):
    self.exp = exp
    self.workdir = workdir
    self.pending = list(todo)
    self.out = out
    self.cache_dir = cache_dir if exp.compilation_cache else ""
    self.progress = _Progress(len(todo), exp.parallel, out)
    self.results: dict[str, Outcome] = {}
    self.running: dict[str, tuple[grid.Job, Any, float]] = {}

  def run(self) -> dict[str, Outcome]:
    try:
      while self.pending or self.running:
        self._launch()
        if not self._collect() and self.running:
          time.sleep(_POLL_S)
        if not self.running and self.pending and not self._launch():
          for job in self.pending:  # nothing can ever become ready
            self._finish(job, "blocked", 0.0, "its SFT job did not finish")
          self.pending = []
    finally:
      for _, handle, _ in self.running.values():
        handle.stop()
    return self.results

  def _launch(self) -> bool:
    launched = False
    while len(self.running) < self.exp.parallel:
      job = self._next_ready()
      if job is None:
        break
      config_io.write(job.config, job.dir)
      self.progress.started(job, grid.latest_checkpoint(job.dir))
      handle = (
        _InProcess(job)
        if self.exp.parallel == 1
        else _Worker(job, self._worker_env())
      )
      self.running[job.label] = (job, handle, time.monotonic())
      handle.start()
      launched = True
    return launched

  def _next_ready(self) -> grid.Job | None:
    for job in list(self.pending):
      if job.kind == grid.SFT:
        self.pending.remove(job)
        return job
      sft = self.results.get(f"sft/seed_{job.seed}")
      if sft is not None and sft.status in ("failed", "blocked"):
        self.pending.remove(job)
        self._finish(job, "blocked", 0.0, f"{sft.job.label} failed")
        continue
      if grid.is_done(grid.sft_dir(self.workdir, job.seed)):
        self.pending.remove(job)
        return job
    return None

  def _collect(self) -> bool:
    collected = False
    for label, (job, handle, t0) in list(self.running.items()):
      result = handle.poll()
      if result is None:
        continue
      del self.running[label]
      ok, detail = result
      ok = ok and grid.is_done(job.dir)
      if ok is False and not detail:
        detail = "no final eval was written"
      wall = time.monotonic() - t0
      grid.record_timing(
        job, wall, "trained" if ok else "failed", mode=handle.mode
      )
      self._finish(job, "trained" if ok else "failed", wall, detail)
      collected = True
    return collected

  def _finish(self, job, status, wall, detail) -> None:
    self.results[job.label] = Outcome(job, status, wall, detail)
    running = [(j, time.monotonic() - t0) for j, _, t0 in self.running.values()]
    self.progress.finished(job, status, wall, detail, self.pending, running)

  def _worker_env(self) -> dict[str, str]:
    env = dict(os.environ)
    if self.cache_dir:
      env.update(compile_cache.env(self.cache_dir))
    if self.exp.single_thread_workers:
      env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA}"
    return env


class _InProcess:
  """Trains a job in this process when started (parallel = 1)."""

  mode = "in-process"

  def __init__(self, job: grid.Job):
    self.job = job
    self.result: tuple[bool, str] | None = None

  def start(self) -> None:
    log = epath.Path(self.job.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with (
      log.open("a") as f,
      contextlib.redirect_stdout(f),
      contextlib.redirect_stderr(f),
    ):
      try:
        config = config_io.read(self.job.dir)
        logging.set_verbosity(config.log_level)
        jobs.train(config, self.job.dir)
        self.result = (True, "")
      except Exception as e:  # reported, and the other jobs go on
        traceback.print_exc(file=f)
        self.result = (False, _one_line(e))

  def poll(self) -> tuple[bool, str] | None:
    return self.result

  def stop(self) -> None:
    pass


class _Worker:
  """A job trained by a worker subprocess (parallel > 1)."""

  mode = "subprocess"

  def __init__(self, job: grid.Job, env: dict[str, str]):
    self.job = job
    self.env = env
    self.proc: subprocess.Popen | None = None

  def start(self) -> None:
    log = epath.Path(self.job.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
      self.proc = subprocess.Popen(
        [sys.executable, "-m", "stepjax.experiment.worker", self.job.dir],
        stdout=f,
        stderr=subprocess.STDOUT,
        env=self.env,
      )

  def poll(self) -> tuple[bool, str] | None:
    rc = self.proc.poll()
    if rc is None:
      return None
    return rc == 0, "" if rc == 0 else f"exit status {rc} (see {self.job.log})"

  def stop(self) -> None:
    """Ends the worker (this invocation was interrupted); it resumes from
    its last checkpoint next time."""
    if self.proc is None or self.proc.poll() is not None:
      return
    self.proc.terminate()
    try:
      self.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()


class _Progress:
  """One line per job start and finish: elapsed time, counts and an ETA
  from the mean wall time of the finished jobs of each kind."""

  def __init__(self, total: int, parallel: int, out: TextIO):
    self.total = total
    self.parallel = parallel
    self.out = out
    self.t0 = time.monotonic()
    self.finished_count = 0
    self.walls: dict[str, list[float]] = {"sft": [], "rl": []}

  def started(self, job: grid.Job, resume_step: int | None) -> None:
    what = "resume" if resume_step is not None else "start "
    extra = f" (from step {resume_step})" if resume_step is not None else ""
    _say(self.out, f"[{self._clock()}] {what} {job.label}{extra}")

  def finished(self, job, status, wall, detail, pending, running) -> None:
    self.finished_count += 1
    if status == "trained":
      self.walls[job.kind].append(wall)
    eta = self._eta(pending, running)
    took = f" in {report_md.duration(wall)}" if status != "blocked" else ""
    why = f": {detail}" if detail else ""
    _say(
      self.out,
      f"[{self._clock()}] {status:7s} {job.label}{took}{why} "
      f"({self.finished_count}/{self.total}; ETA {eta})",
    )

  def _eta(self, pending, running) -> str:
    def estimate(kind: str) -> float | None:
      other = "rl" if kind == "sft" else "sft"
      walls = self.walls[kind] or self.walls[other]
      return sum(walls) / len(walls) if walls else None

    if not pending and not running:
      return "0s"
    left = 0.0
    for job in pending:
      est = estimate(job.kind)
      if est is None:
        return "?"
      left += est
    for job, elapsed in running:
      est = estimate(job.kind)
      if est is None:
        return "?"
      left += max(est - elapsed, 0.0)
    return report_md.duration(left / self.parallel)

  def _clock(self) -> str:
    return report_md.duration(time.monotonic() - self.t0)


def _record_invocation(workdir, exp, wall_s, outcomes) -> None:
  statuses = [o.status for o in outcomes.values()]
  path = epath.Path(workdir) / GRID_FILE
  record = json.loads(path.read_text()) if path.exists() else {}
  record.setdefault("invocations", []).append(
    {
      "wall_s": round(wall_s, 3),
      "parallel": exp.parallel,
      "trained": statuses.count("trained"),
      "failed": statuses.count("failed") + statuses.count("blocked"),
    }
  )
  record["wall_s"] = round(sum(i["wall_s"] for i in record["invocations"]), 3)
  path.write_text(json.dumps(record, indent=2) + "\n")


def _one_line(e: BaseException) -> str:
  text = f"{type(e).__name__}: {e}"
  return text.splitlines()[0] if text else type(e).__name__


def _say(out: TextIO, line: str) -> None:
  print(line, file=out, flush=True)
