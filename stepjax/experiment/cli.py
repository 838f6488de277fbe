"""`stepjax experiment`: trains a grid, then writes its results and plots.

  stepjax experiment --config=configs/experiments/example.py:test \
      --workdir=runs/grid

WORKDIR gets sft/, runs/, logs/ (see grid.py), results.json, results.md and
plots/. Run the same command again after a crash or a kill: finished jobs
are skipped, a partial one resumes, and the results are written again.
"""

from __future__ import annotations

import shlex
from typing import Any, TextIO

from absl import logging
from etils import epath
from ml_collections import config_flags

from stepjax.experiment import figures, report_md, results, runner, spec


def main(argv: list[str], config: Any, flag_values: Any) -> None:
  exp = spec.from_config(config)
  logging.set_verbosity(exp.base.log_level)
  run(exp, flag_values.workdir, command(flag_values))


def run(
  exp: spec.Experiment,
  workdir: str,
  command: str = "",
  out: TextIO | None = None,
) -> dict:
  """Trains what is left of the grid, then writes results and plots;
  progress lines go to `out` (default stdout)."""
  outcomes = runner.run_grid(exp, workdir, out)
  failed = [o for o in outcomes if o.status in ("failed", "blocked")]
  if failed:
    first = failed[0]
    raise RuntimeError(
      f"{len(failed)} of {len(outcomes)} jobs did not finish (first: "
      f"{first.job.label}: {first.detail}); see {first.job.log}, fix, and "
      "run the same command again"
    )
  return write_results(exp, workdir, command)


def write_results(exp: spec.Experiment, workdir: str, command: str) -> dict:
  """results.json, results.md and plots/ of a finished grid."""
  res = results.collect(exp, workdir, command)
  results.write(res, workdir)
  markdown = report_md.render(res)
  (epath.Path(workdir) / "results.md").write_text(markdown)
  figures.render(res, exp, workdir)
  print(markdown, flush=True)
  return res


def command(flag_values: Any) -> str:
  """The command line that reproduces this grid."""
  flag = flag_values["config"]
  parts = [f"--config={config_flags.get_config_filename(flag)}"]
  for key, value in sorted(config_flags.get_override_values(flag).items()):
    parts.append(f"--config.{key}={value}")
  parts.append(f"--workdir={flag_values.workdir}")
  return " ".join(["stepjax experiment", *map(shlex.quote, parts)])
