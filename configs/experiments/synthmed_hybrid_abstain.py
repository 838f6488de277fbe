r"""The hybrid whose step-value head abstains where it is unsure.

  stepjax experiment --config=configs/experiments/synthmed_hybrid_abstain.py \
      --workdir=runs/synthmed_hybrid_abstain

The SFT start and RL settings of synthmed_pretrained_b12.py (150 RL steps
of 12 prompts x G = 8 per seed). The hybrids so far reshaped every step
the judge did not label by the step-value head's label, however unsure the
head was; the RL-trained heads call 28-32% of the valid steps invalid, and
MRPO then penalises those steps instead of rewarding them. Here a head
label shapes its step only where the head's confidence, max(p, 1 - p), is
at least 0.8 (rl.value_min_confidence=0.8, fixed before any run): the
other steps keep their completion's advantage, as under GRPO. The judge's
25% (a seeded random share), the head's training and the process reward
R_proc (the share of steps labelled valid, the head's labels included,
unsure or not) are unchanged. Every
hybrid run logs how wrong its labels were against the verifier, over all
labels and over the ones that shaped a step, and the share it abstained
on (label_abstained_share).

  mrpo_b12                   verifier labels for every completion
  mrpo_hybrid_b12_vlr10      25% judged at random, the head for the rest
  mrpo_hybrid_b12_conf80     the same, the head abstaining below 0.8
  mrpo_hybrid_b12_conf90     the same, the head abstaining below 0.9

The 0.9 run was added after the 0.8 runs' training metrics (not their
evals) showed the head abstaining on 43-72% of its steps and, late in RL,
confidently calling 37% of the invalid steps it did label valid: a
stricter threshold is the dose that would drop those labels.

Variants (comma-separated): parallel=N, seeds=N (the first N of 0, 1, ...),
test (the tiny model, seconds per run).
"""

import pathlib

from stepjax import config_utils

_HERE = pathlib.Path(__file__).resolve().parent

MIN_CONFIDENCE = 0.8
STRICT_MIN_CONFIDENCE = 0.9


def get_config(arg=None):
  c = config_utils.load_config_file(_HERE / "synthmed_pretrained_b12.py", arg)
  runs = dict(c.runs)
  vlr10 = runs["mrpo_hybrid_b12_vlr10"]
  return config_utils.regrid(
    c,
    runs=(
      ("mrpo_b12", runs["mrpo_b12"]),
      ("mrpo_hybrid_b12_vlr10", vlr10),
      (
        "mrpo_hybrid_b12_conf80",
        f"{vlr10},rl.value_min_confidence={MIN_CONFIDENCE}",
      ),
      (
        "mrpo_hybrid_b12_conf90",
        f"{vlr10},rl.value_min_confidence={STRICT_MIN_CONFIDENCE}",
      ),
    ),
    baseline="mrpo_b12",
    compare=(
      ("mrpo_hybrid_b12_vlr10", "mrpo_b12"),
      ("mrpo_hybrid_b12_conf80", "mrpo_b12"),
      ("mrpo_hybrid_b12_conf80", "mrpo_hybrid_b12_vlr10"),
      ("mrpo_hybrid_b12_conf90", "mrpo_b12"),
      ("mrpo_hybrid_b12_conf90", "mrpo_hybrid_b12_conf80"),
    ),
  )
