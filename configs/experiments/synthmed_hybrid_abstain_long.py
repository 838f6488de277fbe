r"""The abstaining hybrid at 300 RL steps, beside verifier-labelled MRPO.

  stepjax experiment \
      --config=configs/experiments/synthmed_hybrid_abstain_long.py \
      --workdir=runs/synthmed_hybrid_abstain_long

synthmed_hybrid_abstain.py met the hybrid target (>= 90% of verifier
MRPO's validity gain with 25% of completions judged) at 150 RL steps,
where verifier MRPO's own gain was small (+4.7, its CI reaching 0). At 300
RL steps (synthmed_b12_long.py) verifier MRPO gained +8.9: this grid asks
whether the abstaining hybrid keeps >= 90% of that larger gain. The SFT
start and per-step settings are synthmed_pretrained_b12.py's (12 prompts x
G = 8 per RL step), 300 RL steps (the learning rate's cosine decay spans
them), held-out evals at RL steps 150 and 300. The threshold stays the
one fixed before the 150-step grid (0.8); nothing else changes.

  mrpo_b12_300                verifier labels for every completion
  mrpo_hybrid_b12_conf80_300  25% judged at random, the step-value head
                              (10x the policy's learning rate) for the
                              rest, abstaining below confidence 0.8

Variants (comma-separated): parallel=N, seeds=N (the first N of 0, 1, ...),
test (the tiny model, seconds per run).
"""

import pathlib

from stepjax import config_utils

_HERE = pathlib.Path(__file__).resolve().parent

RL_STEPS = 300
MIN_CONFIDENCE = 0.8


def get_config(arg=None):
  c = config_utils.load_config_file(_HERE / "synthmed_pretrained_b12.py", arg)
  runs = dict(c.runs)
  config_utils.longer_rl(c, RL_STEPS)
  hybrid = runs["mrpo_hybrid_b12_vlr10"]
  return config_utils.regrid(
    c,
    runs=(
      ("mrpo_b12_300", runs["mrpo_b12"]),
      (
        "mrpo_hybrid_b12_conf80_300",
        f"{hybrid},rl.value_min_confidence={MIN_CONFIDENCE}",
      ),
    ),
    baseline="mrpo_b12_300",
    compare=(("mrpo_hybrid_b12_conf80_300", "mrpo_b12_300"),),
  )
