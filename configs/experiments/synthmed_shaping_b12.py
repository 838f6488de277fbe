r"""Where MRPO's accuracy cost comes from: valid steps of wrong answers.

  stepjax experiment --config=configs/experiments/synthmed_shaping_b12.py \
      --workdir=runs/synthmed_shaping_b12

The SFT start and RL settings of synthmed_pretrained_b12.py (150 RL steps
of 12 prompts x G = 8 per seed). There MRPO gained 7 points less accuracy
than GRPO, and its answers contradicted their own chains twice as often.
The spec's shaping gives a valid step of a wrong answer (R_ans <= tau)
+|A_i|, so a wrong completion whose chain is right is rewarded on every
step token and penalised only on its answer tokens. Here the same MRPO
with valid steps keeping A_i (rl.valid_step_advantage=keep): only the
invalid steps are reshaped (-m(k, K) |A_i|), so a wrong answer's valid
steps are pushed down as in GRPO.

  grpo_b12, mrpo_b12   the comparison of synthmed_pretrained_b12.py
  mrpo_b12_keep        MRPO, valid steps of wrong answers keep A_i

Variants (comma-separated): parallel=N, seeds=N (the first N of 0, 1, ...),
test (the tiny model, seconds per run).
"""

import pathlib

from stepjax import config_utils

_HERE = pathlib.Path(__file__).resolve().parent


def get_config(arg=None):
  c = config_utils.load_config_file(_HERE / "synthmed_pretrained_b12.py", arg)
  runs = dict(c.runs)
  mrpo = runs["mrpo_b12"]
  return config_utils.regrid(
    c,
    runs=(
      ("grpo_b12", runs["grpo_b12"]),
      ("mrpo_b12", mrpo),
      ("mrpo_b12_keep", f"{mrpo},rl.valid_step_advantage=keep"),
    ),
    baseline="grpo_b12",
    compare=(
      ("mrpo_b12", "grpo_b12"),
      ("mrpo_b12_keep", "grpo_b12"),
      ("mrpo_b12_keep", "mrpo_b12"),
    ),
  )
