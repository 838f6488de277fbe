r"""Example experiment grid: GRPO vs MRPO on SynthMed, from one SFT per seed.

  stepjax experiment --config=configs/experiments/example.py \
      --workdir=runs/example
  stepjax experiment --config=configs/experiments/example.py:test \
      --workdir=/tmp/grid

The format is documented in stepjax/experiment/spec.py. Variants
(comma-separated): parallel=N (runs trained at once); test (the tiny model,
2 runs x 2 seeds, 2 SFT and 2 RL steps each: the whole pipeline in about a
minute on a CPU).
"""

import pathlib

import ml_collections

from stepjax import config_utils

_CONFIGS = pathlib.Path(__file__).resolve().parent.parent


def get_config(arg=None):
  args = config_utils.parse_arg(arg, parallel=1, test=False)
  c = ml_collections.ConfigDict()
  # Every run shares the default SynthMed job; the grid sets seed, init_from
  # and sft.steps=0 per run.
  c.base = config_utils.load_config_file(
    _CONFIGS / "synthmed_tiny.py", "test" if args.test else None
  )
  c.seeds = (0, 1, 2)
  c.runs = (
    ("grpo", "rl.algorithm=grpo"),
    ("mrpo", "rl.algorithm=mrpo"),
  )
  c.baseline = "grpo"
  c.compare = ()
  c.eval_every = 50
  c.parallel = args.parallel
  c.bootstrap_samples = 5000
  # Optional keys, at their defaults.
  c.bootstrap_seed = 0
  c.compilation_cache = True
  c.single_thread_workers = False
  if args.test:
    c.seeds = (0, 1)
    c.eval_every = 1
    c.bootstrap_samples = 200
    base = c.base
    base.unlock()
    base.mesh.data = 1  # one device even where tests fake eight
    base.data.num_eval = 4
    base.train.keep_checkpoints = 3
  c.lock()
  return c
