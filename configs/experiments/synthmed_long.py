r"""Does RL learn on SynthMed with 3x the default job's sampling compute?

  stepjax experiment --config=configs/experiments/synthmed_long.py \
      --workdir=runs/synthmed_long

The published grid (synthmed.py: 150 RL steps of 4 prompts x G = 8) ends
inside the dip that the first RL steps cause (docs/results/diagnosis). This
grid spends 3x that sampling compute (14,400 completions per run) two ways:

  grpo_long, mrpo_long   450 RL steps of 4 prompts (more, noisier updates)
  grpo_b12, mrpo_b12     150 RL steps of 12 prompts (the default job's
                         number of updates, each from a 3x larger batch)

Everything else is the default job's (lr 3e-4, aligned verifier labels),
from the same SFT checkpoints as synthmed.py for the same seeds.

Variants (comma-separated): parallel=N, seeds=N (the first N of 0, 1, ...),
test (the tiny model, seconds per run).
"""

import pathlib

import ml_collections

from stepjax import config_utils

_CONFIGS = pathlib.Path(__file__).resolve().parent.parent

RUNS = (
  ("grpo_long", "rl.algorithm=grpo,train.steps=450"),
  ("mrpo_long", "rl.algorithm=mrpo,train.steps=450"),
  ("grpo_b12", "rl.algorithm=grpo,train.steps=150,data.batch_size=12"),
  ("mrpo_b12", "rl.algorithm=mrpo,train.steps=150,data.batch_size=12"),
)


def get_config(arg=None):
  args = config_utils.parse_arg(arg, parallel=1, seeds=2, test=False)
  c = ml_collections.ConfigDict()
  c.base = config_utils.synthmed_grid_base(_CONFIGS, args.test)
  c.seeds = tuple(range(args.seeds))
  runs = RUNS
  c.eval_every = 150
  if args.test:
    runs = (
      ("grpo_long", "rl.algorithm=grpo,train.steps=4"),
      ("mrpo_b4", "rl.algorithm=mrpo,train.steps=2,data.batch_size=4"),
    )
    c.seeds = tuple(range(min(args.seeds, 2)))
    c.eval_every = 2
  c.runs = runs
  c.baseline = runs[0][0]
  c.compare = ()
  if not args.test:
    c.compare = (("mrpo_long", "grpo_long"), ("mrpo_b12", "grpo_b12"))
  c.parallel = args.parallel
  c.bootstrap_samples = 5000 if not args.test else 200
  c.lock()
  return c
