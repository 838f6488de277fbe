r"""RL from an SFT start that sees lesions: grounded SFT -> GRPO / MRPO.

  stepjax experiment --config=configs/experiments/synthmed_grounded.py \
      --workdir=runs/synthmed_grounded

Every earlier SynthMed grid started RL from an SFT policy blind to lesions
(`stepjax probe`: removing every lesion moved the gold chain's
log-likelihood by <= 0.04 nats; docs/results/diagnosis, section 7), so RL
had nothing to sharpen on most questions. This grid's SFT sees more:
1500 steps with 6144 extra SynthMed scans whose target is a findings
report (every organ's lesion count, `sft.findings_scans`) and the
grounding readout on the image features (`sft.grounding_weight`: the
vision tower must tell which organs have lesions). RL is the default
job's: 150 steps of 4 prompts x G = 8 per run.

  grpo, mrpo   the comparison

Variants (comma-separated): parallel=N, seeds=N (the first N of 0, 1, ...),
test (the tiny model, seconds per run).
"""

import pathlib

import ml_collections

from stepjax import config_utils

_CONFIGS = pathlib.Path(__file__).resolve().parent.parent

SFT_STEPS = 1500
FINDINGS_SCANS = 6144
GROUNDING_WEIGHT = 1.0

RUNS = (
  ("grpo", "rl.algorithm=grpo"),
  ("mrpo", "rl.algorithm=mrpo"),
)


def get_config(arg=None):
  args = config_utils.parse_arg(arg, parallel=1, seeds=3, test=False)
  c = ml_collections.ConfigDict()
  c.base = config_utils.synthmed_grid_base(_CONFIGS, args.test)
  base = c.base
  base.sft.steps = SFT_STEPS
  base.sft.findings_scans = FINDINGS_SCANS
  base.sft.grounding_weight = GROUNDING_WEIGHT
  c.seeds = tuple(range(args.seeds))
  c.eval_every = 150  # the final eval only
  if args.test:
    c.seeds = tuple(range(min(args.seeds, 2)))
    c.eval_every = 1
    base.sft.steps = 2
    base.sft.findings_scans = 4
  c.runs = RUNS
  c.baseline = "grpo"
  c.compare = (("mrpo", "grpo"),)
  c.parallel = args.parallel
  c.bootstrap_samples = 5000 if not args.test else 200
  c.lock()
  return c
