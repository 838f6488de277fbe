r"""The hybrid source judging the completions its value head is least sure of.

  stepjax experiment --config=configs/experiments/synthmed_hybrid_uncertain.py \
      --workdir=runs/synthmed_hybrid_uncertain

The SFT start and RL settings of synthmed_pretrained_b12.py (150 RL steps
of 12 prompts x G = 8 per seed). The hybrids so far sent a seeded random
25% of the completions to the judge and took the step-value head's labels
for the rest; the heads flagged 28-32% of valid steps as invalid, and the
hybrid got at most 60% of verifier MRPO's validity gain. Here the same 25%
goes to the completions whose head labels are least certain (the head's
own probability that one of its labels is wrong: rl.hybrid_select=
uncertain), so the judge corrects the labels most likely to be wrong.
Every hybrid run logs how wrong the labels it trained on were, against
the verifier (label_false_invalid_share, label_false_valid_share).

  mrpo_b12                   verifier labels for every completion
  mrpo_hybrid_b12_vlr10      25% judged, chosen at random (section 14)
  mrpo_hybrid_b12_uncertain  25% judged, the least certain ones

Variants (comma-separated): parallel=N, seeds=N (the first N of 0, 1, ...),
test (the tiny model, seconds per run), runs=hybrids (the two hybrids
alone, paired with each other: the selection's effect, without the
verifier run).
"""

import pathlib

from stepjax import config_utils

_HERE = pathlib.Path(__file__).resolve().parent


def get_config(arg=None):
  which, arg = config_utils.pop_arg(arg, "runs", "all", ("all", "hybrids"))
  c = config_utils.load_config_file(_HERE / "synthmed_pretrained_b12.py", arg)
  runs = dict(c.runs)
  vlr10 = runs["mrpo_hybrid_b12_vlr10"]
  hybrids = (
    ("mrpo_hybrid_b12_vlr10", vlr10),
    ("mrpo_hybrid_b12_uncertain", f"{vlr10},rl.hybrid_select=uncertain"),
  )
  if which == "hybrids":
    return config_utils.regrid(
      c,
      runs=hybrids,
      baseline="mrpo_hybrid_b12_vlr10",
      compare=(("mrpo_hybrid_b12_uncertain", "mrpo_hybrid_b12_vlr10"),),
    )
  return config_utils.regrid(
    c,
    runs=(("mrpo_b12", runs["mrpo_b12"]), *hybrids),
    baseline="mrpo_b12",
    compare=(
      ("mrpo_hybrid_b12_vlr10", "mrpo_b12"),
      ("mrpo_hybrid_b12_uncertain", "mrpo_b12"),
      ("mrpo_hybrid_b12_uncertain", "mrpo_hybrid_b12_vlr10"),
    ),
  )
