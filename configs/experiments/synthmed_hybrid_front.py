r"""The hybrid source with its judge budget front-loaded, on the b12 grid.

  stepjax experiment --config=configs/experiments/synthmed_hybrid_front.py \
      --workdir=runs/synthmed_hybrid_front

The SFT start and RL settings of synthmed_pretrained_b12.py (150 RL steps
of 12 prompts x G = 8 per seed). In the b12 grid the step-value head,
trained only on the judge's 25% of completions, got under half of
verifier MRPO's validity gain. Here the same 25% budget (3600 of 14400
completions) is spent differently: the first 10 RL steps judge every
completion, so the head starts from ~960 labelled completions, and the
other 140 steps judge 19.6% each (rl.hybrid_full_judge_steps=10).

  mrpo_b12               verifier labels for every completion (reference)
  mrpo_hybrid_b12_vlr10  25% judged every step, head at 10x the lr
  mrpo_hybrid_b12_front  the same with the budget front-loaded
  mrpo_hybrid_b12_vlr30  25% judged every step, head at 30x the lr: is
                         the head held back by the size of its updates?

Variants (comma-separated): parallel=N, seeds=N (the first N of 0, 1, ...),
test (the tiny model, seconds per run).
"""

import pathlib

from stepjax import config_utils

_HERE = pathlib.Path(__file__).resolve().parent

FULL_JUDGE_STEPS = 10


def get_config(arg=None):
  c = config_utils.load_config_file(_HERE / "synthmed_pretrained_b12.py", arg)
  runs = dict(c.runs)
  vlr10 = runs["mrpo_hybrid_b12_vlr10"]
  front = f"rl.hybrid_full_judge_steps={FULL_JUDGE_STEPS}"
  if c.base.train.steps < 4 * FULL_JUDGE_STEPS:  # :test, 2 RL steps
    front = "rl.hybrid_judge_fraction=0.5,rl.hybrid_full_judge_steps=1"
  return config_utils.regrid(
    c,
    runs=(
      ("mrpo_b12", runs["mrpo_b12"]),
      ("mrpo_hybrid_b12_vlr10", vlr10),
      ("mrpo_hybrid_b12_front", f"{vlr10},{front}"),
      (
        "mrpo_hybrid_b12_vlr30",
        vlr10.replace("rl.value_lr_scale=10", "rl.value_lr_scale=30"),
      ),
    ),
    baseline="mrpo_b12",
    compare=(
      ("mrpo_hybrid_b12_vlr10", "mrpo_b12"),
      ("mrpo_hybrid_b12_front", "mrpo_b12"),
      ("mrpo_hybrid_b12_front", "mrpo_hybrid_b12_vlr10"),
      ("mrpo_hybrid_b12_vlr30", "mrpo_b12"),
      ("mrpo_hybrid_b12_vlr30", "mrpo_hybrid_b12_vlr10"),
    ),
  )
