r"""The abstaining hybrid with a step-value head that reads each step's
mean hidden state, at 300 RL steps, beside section 21's two runs.

  stepjax experiment \
      --config=configs/experiments/synthmed_hybrid_stepmean_long.py \
      --workdir=runs/synthmed_hybrid_stepmean_long

At 300 RL steps the abstaining hybrid kept 81% of verifier MRPO's validity
gain (synthmed_hybrid_abstain_long.py; target 90%), its head confident
mainly where it says "valid" and wrong on 75-79% of the invalid steps it
labelled confidently. Probes of the head's input (section 17) found that
the mean hidden state over the step's tokens, beside its last token's,
lowers the test BCE by 0.014-0.036: more of the step's claim reaches the
head. This grid asks whether that head (`model.step_value_input=
last+step_mean`) keeps >= 90% of verifier MRPO's gain. Everything else is
section 21's hybrid (25% judged at random, head at 10x the policy's
learning rate, abstaining below confidence 0.8); nothing is tuned.

  mrpo_b12_300                         verifier labels for every completion
  mrpo_hybrid_b12_conf80_300           section 21's hybrid (last token)
  mrpo_hybrid_b12_conf80_stepmean_300  the same, its head reading the
                                       step's mean hidden state too

The first two runs are section 21's (their directories can be copied from
that grid's workdir: finished runs are skipped).

Variants (comma-separated): parallel=N, seeds=N (the first N of 0, 1, ...),
test (the tiny model, seconds per run).
"""

import pathlib

from stepjax import config_utils

_HERE = pathlib.Path(__file__).resolve().parent


def get_config(arg=None):
  c = config_utils.load_config_file(
    _HERE / "synthmed_hybrid_abstain_long.py", arg
  )
  runs = dict(c.runs)
  hybrid = runs["mrpo_hybrid_b12_conf80_300"]
  return config_utils.regrid(
    c,
    runs=(
      ("mrpo_b12_300", runs["mrpo_b12_300"]),
      ("mrpo_hybrid_b12_conf80_300", hybrid),
      (
        "mrpo_hybrid_b12_conf80_stepmean_300",
        f"{hybrid},model.step_value_input=last+step_mean",
      ),
    ),
    baseline="mrpo_b12_300",
    compare=(
      ("mrpo_hybrid_b12_conf80_300", "mrpo_b12_300"),
      ("mrpo_hybrid_b12_conf80_stepmean_300", "mrpo_b12_300"),
      ("mrpo_hybrid_b12_conf80_stepmean_300", "mrpo_hybrid_b12_conf80_300"),
    ),
  )
