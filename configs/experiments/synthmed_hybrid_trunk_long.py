r"""The step-mean hybrid whose value loss also trains the policy's layers
(a shared trunk), at 300 RL steps, beside verifier MRPO with the same
auxiliary loss.

  stepjax experiment \
      --config=configs/experiments/synthmed_hybrid_trunk_long.py \
      --workdir=runs/synthmed_hybrid_trunk_long

The step-value head has read the policy's hidden states through a stopped
gradient: its loss trains the head only. Probes (section 17) and two head
inputs (sections 21-22) put the head's ceiling at its input: the policy's
features barely separate valid steps from invalid ones, so the head stays
confident on few invalid steps and the abstaining hybrid keeps 76-81% of
verifier MRPO's validity gain at 300 RL steps (target 90%). This grid asks
whether features trained for the head as well (`rl.value_shapes_policy`:
the value loss, at its weight 0.1, reaches the policy's layers) let the
hybrid keep >= 90%. Everything else is section 22's step-mean hybrid (25%
judged at random, head at 10x, abstaining below confidence 0.8); nothing
is tuned.

  mrpo_b12_300                               verifier labels, every
                                             completion
  mrpo_hybrid_b12_conf80_stepmean_300        section 22's hybrid
  mrpo_hybrid_b12_conf80_stepmean_trunk_300  the same, its value loss
                                             shaping the policy too
  mrpo_b12_trunk_300                         verifier MRPO with the same
                                             head and auxiliary loss (on
                                             every completion's labels):
                                             what the loss does to the
                                             policy by itself

The first two runs are section 22's (their directories can be copied from
that grid's workdir: finished runs are skipped). Runs train in this order,
so the question's run finishes first.

Variants (comma-separated): parallel=N, seeds=N (the first N of 0, 1, ...),
test (the tiny model, seconds per run).
"""

import pathlib

from stepjax import config_utils

_HERE = pathlib.Path(__file__).resolve().parent
_TRUNK = "rl.value_shapes_policy=True"
# The control's head as the hybrid's (its labels shape nothing under
# verifier MRPO; what it learns decides the gradient it sends the policy).
_HEAD = "model.step_value_input=last+step_mean,rl.value_lr_scale=10"


def get_config(arg=None):
  c = config_utils.load_config_file(
    _HERE / "synthmed_hybrid_stepmean_long.py", arg
  )
  runs = dict(c.runs)
  verifier = runs["mrpo_b12_300"]
  hybrid = runs["mrpo_hybrid_b12_conf80_stepmean_300"]
  return config_utils.regrid(
    c,
    runs=(
      ("mrpo_b12_300", verifier),
      ("mrpo_hybrid_b12_conf80_stepmean_300", hybrid),
      ("mrpo_hybrid_b12_conf80_stepmean_trunk_300", f"{hybrid},{_TRUNK}"),
      ("mrpo_b12_trunk_300", f"{verifier},{_HEAD},{_TRUNK}"),
    ),
    baseline="mrpo_b12_300",
    compare=(
      ("mrpo_hybrid_b12_conf80_stepmean_trunk_300", "mrpo_b12_300"),
      (
        "mrpo_hybrid_b12_conf80_stepmean_trunk_300",
        "mrpo_hybrid_b12_conf80_stepmean_300",
      ),
      ("mrpo_b12_trunk_300", "mrpo_b12_300"),
      ("mrpo_hybrid_b12_conf80_stepmean_trunk_300", "mrpo_b12_trunk_300"),
    ),
  )
