"""`stepjax train`: the Trainer (train/) with evaluation (eval/) plugged in.

The one place that joins the two packages: train/ trains and never imports
eval/; eval/ evaluates policies and may use train/'s pieces. A training job
needs both, so it is composed here.
"""

from __future__ import annotations

from typing import Any

from absl import logging

from stepjax.eval import evaluate
from stepjax.train import loop


def train(config: Any, workdir: str) -> dict:
  """Trains per `config` in `workdir` (resuming if it holds a checkpoint);
  returns the evaluation reports."""
  return loop.Trainer(config, workdir, evaluator=evaluate).run()


def main(argv: list[str], config: Any, flag_values: Any) -> None:
  logging.set_verbosity(config.log_level)
  train(config, flag_values.workdir)
