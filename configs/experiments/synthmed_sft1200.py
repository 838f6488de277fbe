r"""RL from a converged SFT start: SFT 1200 steps -> GRPO / MRPO, 3 seeds.

  stepjax experiment \
      --config=configs/experiments/synthmed_sft1200.py:parallel=2 \
      --workdir=runs/synthmed_sft1200

The published grid (synthmed.py) starts RL from the default job's 300 SFT
steps. That start is under-trained: on seed 0's 512 held-out scans, 18% of
its greedy answers contradict the chain's own last step ("So the answer is
left." then <answer>right</answer>) and it names the imaging modality
right 72% of the time. After 1200 SFT steps (4x), neither happens (0%
contradictions, modality 100%) and greedy accuracy is 50.0 instead of 38.3
(docs/results/diagnosis, section 6). This grid asks whether RL learns from
that start: 150 RL steps of 12 prompts x G = 8 per run (the best set-up of
synthmed_long.py), everything else the default job's.

  grpo_b12, mrpo_b12   the comparison at temperature 1

Variants (comma-separated): parallel=N, seeds=N (the first N of 0, 1, ...),
test (the tiny model, seconds per run).
"""

import pathlib

import ml_collections

from stepjax import config_utils

_CONFIGS = pathlib.Path(__file__).resolve().parent.parent

SFT_STEPS = 1200

RUNS = (
  ("grpo_b12", "rl.algorithm=grpo,data.batch_size=12"),
  ("mrpo_b12", "rl.algorithm=mrpo,data.batch_size=12"),
)


def get_config(arg=None):
  args = config_utils.parse_arg(arg, parallel=1, seeds=3, test=False)
  c = ml_collections.ConfigDict()
  c.base = config_utils.synthmed_grid_base(_CONFIGS, args.test)
  base = c.base
  base.sft.steps = SFT_STEPS
  c.seeds = tuple(range(args.seeds))
  runs = RUNS
  c.eval_every = 150  # the final eval only
  if args.test:
    c.seeds = tuple(range(min(args.seeds, 2)))
    c.eval_every = 1
    base.sft.steps = 2
    runs = tuple((n, o.replace("=12", "=2")) for n, o in RUNS)
  c.runs = runs
  c.baseline = runs[0][0]
  c.compare = ((runs[1][0], runs[0][0]),)
  c.parallel = args.parallel
  c.bootstrap_samples = 5000 if not args.test else 200
  c.lock()
  return c
