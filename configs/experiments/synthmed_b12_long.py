r"""Twice the RL steps on the b12 grid: does GRPO reach +10 / +10?

  stepjax experiment --config=configs/experiments/synthmed_b12_long.py \
      --workdir=runs/synthmed_b12_long

The SFT start and per-step settings of synthmed_pretrained_b12.py (12
prompts x G = 8 per RL step), with 300 RL steps instead of 150 (28,800
completions per run, equal within this grid; the learning rate's cosine
decay spans the 300 steps). There GRPO gained +9.7 accuracy and +7.9 step
validity over its SFT start, short of the +10 / +10 target; MRPO +2.5 /
+4.7. Held-out evals at RL steps 150 and 300.

  grpo_b12_300, mrpo_b12_300   the comparison at twice the RL steps

Variants (comma-separated): parallel=N, seeds=N (the first N of 0, 1, ...),
test (the tiny model, seconds per run).
"""

import pathlib

from stepjax import config_utils

_HERE = pathlib.Path(__file__).resolve().parent

RL_STEPS = 300


def get_config(arg=None):
  c = config_utils.load_config_file(_HERE / "synthmed_pretrained_b12.py", arg)
  config_utils.longer_rl(c, RL_STEPS)
  c.unlock()
  runs = dict(c.runs)
  c.runs = (
    ("grpo_b12_300", runs["grpo_b12"]),
    ("mrpo_b12_300", runs["mrpo_b12"]),
  )
  c.baseline = "grpo_b12_300"
  c.compare = (("mrpo_b12_300", "grpo_b12_300"),)
  c.lock()
  return c
