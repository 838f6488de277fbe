r"""Verifier-labelled MRPO at 450 RL steps: does it reach +10 / +10?

  stepjax experiment --config=configs/experiments/synthmed_mrpo_450.py \
      --workdir=runs/synthmed_mrpo_450

At 300 RL steps (synthmed_b12_long.py) GRPO met the "RL learns" target
(+12.8 accuracy, +11.3 step validity over its SFT start) and MRPO missed
it by 0.8 / 1.1 points (+9.2 / +8.9), its held-out gains still rising
(validity +5.8 at step 150, +8.9 at 300). This grid measures MRPO with
1.5 times the RL steps: the same SFT starts and per-step settings (12
prompts x G = 8), 450 RL steps, the learning rate's cosine decay spanning
them, held-out evals at RL steps 225 and 450. It is a point on MRPO's
learning curve, not an equal-compute comparison: GRPO was not run at 450
steps.

  mrpo_b12_450   verifier labels for every completion

Variants (comma-separated): parallel=N, seeds=N (the first N of 0, 1, ...),
test (the tiny model, seconds per run).
"""

import pathlib

from stepjax import config_utils

_HERE = pathlib.Path(__file__).resolve().parent

RL_STEPS = 450


def get_config(arg=None):
  c = config_utils.load_config_file(_HERE / "synthmed_pretrained_b12.py", arg)
  config_utils.longer_rl(c, RL_STEPS)
  runs = dict(c.runs)
  return config_utils.regrid(
    c,
    runs=(("mrpo_b12_450", runs["mrpo_b12"]),),
    baseline="mrpo_b12_450",
    compare=(),
  )
