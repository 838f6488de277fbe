r"""synthmed_pretrained.py's grid with three times the RL sampling compute.

  stepjax experiment --config=configs/experiments/synthmed_pretrained_b12.py \
      --workdir=runs/synthmed_pretrained_b12

The same SFT start per seed as synthmed_pretrained.py (vision tower
pretrained on per-token labels, then frozen; 1500 SFT steps with findings
scans), then 150 RL steps of 12 prompts x G = 8 instead of 4 prompts: does
RL from a policy that sees lesions gain more with more prompts per step?

  grpo_b12, mrpo_b12   the comparison
  mrpo_hybrid_b12      process labels from a simulated judge (the
                       verifier, calls counted) for 25% of the
                       completions, the step-value head for the rest
  mrpo_hybrid_b12_vlr10  the same with the head's learning rate 10 times
                       the policy's (rl.value_lr_scale=10)

Variants (comma-separated): parallel=N, seeds=N (the first N of 0, 1, ...),
test (the tiny model, seconds per run).
"""

import pathlib

from stepjax import config_utils

_HERE = pathlib.Path(__file__).resolve().parent

PROMPTS_PER_STEP = 12
_HYBRID = (
  "rl.process_source=hybrid,judge.simulate=verifier,"
  "rl.hybrid_judge_fraction=0.25"
)


def get_config(arg=None):
  c = config_utils.load_config_file(_HERE / "synthmed_pretrained.py", arg)
  c.unlock()
  batch = f"data.batch_size={PROMPTS_PER_STEP}"
  c.runs = (
    ("grpo_b12", f"rl.algorithm=grpo,{batch}"),
    ("mrpo_b12", f"rl.algorithm=mrpo,{batch}"),
    (
      "mrpo_hybrid_b12",
      f"rl.algorithm=mrpo,{batch},{_HYBRID}",
    ),
    (
      "mrpo_hybrid_b12_vlr10",
      f"rl.algorithm=mrpo,{batch},{_HYBRID},rl.value_lr_scale=10",
    ),
  )
  c.baseline = "grpo_b12"
  c.compare = (
    ("mrpo_b12", "grpo_b12"),
    ("mrpo_hybrid_b12", "mrpo_b12"),
    ("mrpo_hybrid_b12_vlr10", "mrpo_b12"),
    ("mrpo_hybrid_b12_vlr10", "mrpo_hybrid_b12"),
  )
  c.lock()
  return c
