"""A grid job in its own process: `python -m stepjax.experiment.worker DIR`.

Trains the job config that `stepjax experiment` wrote to DIR/config.json,
in DIR (resuming from DIR's latest checkpoint, like `stepjax train`). The
runner starts one per job when `parallel` > 1.
"""

from __future__ import annotations

from absl import app, logging

from stepjax import jobs
from stepjax.experiment import config_io


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError(
      "usage: python -m stepjax.experiment.worker JOB_DIR (a directory "
      "holding the config.json that `stepjax experiment` wrote)"
    )
  config = config_io.read(argv[1])
  logging.set_verbosity(config.log_level)
  jobs.train(config, argv[1])


if __name__ == "__main__":
  app.run(main)
