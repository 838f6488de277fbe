r"""The SynthMed experiment we publish: SFT -> GRPO / GDPO / MRPO, 3 seeds.

  stepjax experiment --config=configs/experiments/synthmed.py \
      --workdir=runs/synthmed_grid

Every run starts from its seed's SFT checkpoint (the default job's SFT)
and samples the same number of completions (the default job's RL phase:
train.steps x data.batch_size x sampling.group_size). All runs of a seed
are evaluated on the same held-out set (data.num_eval scans, greedy).

Runs:
  grpo, gdpo, mrpo   the paper's comparison; process labels from the
                     SynthMed verifier (exact step truth).
  mrpo_hybrid        labels from a simulated judge (the verifier, calls
                     counted) for rl.hybrid_judge_fraction of the
                     completions, the step-value head for the rest.
  mrpo_noise10/20    a fallible judge: 10% / 20% of the verifier's step
                     labels flipped.
  mrpo_linear        penalty schedule linear (e -> 1) instead of exp.
  mrpo_tau1          tau = 1: shaping on every completion whose answer
                     is not exactly right (the spec's 0.6 lets partial
                     answers through).
  mrpo_truth         process labels from the truth-only verifier (any true
                     claim is valid, relevant or not); evaluated, like
                     every run, with the aligned verifier.
  (penalty "none", shaping off with the same rewards, is the grpo run.)

Variants (comma-separated): parallel=N (runs trained at once), seeds=N
(the first N of 0, 1, 2, ...), core (grpo, gdpo and mrpo only),
only=NAME+NAME+... (these runs only: e.g. the results of the runs a grid
stopped early has finished), test (the tiny model, seconds per run).
"""

import pathlib

import ml_collections

from stepjax import config_utils

_CONFIGS = pathlib.Path(__file__).resolve().parent.parent

RUNS = (
  ("grpo", "rl.algorithm=grpo"),
  ("mrpo", "rl.algorithm=mrpo"),
  ("mrpo_truth", "rl.algorithm=mrpo,data.verifier=truth"),
  ("gdpo", "rl.algorithm=gdpo"),
  (
    "mrpo_hybrid",
    "rl.algorithm=mrpo,rl.process_source=hybrid,judge.simulate=verifier,"
    "rl.hybrid_judge_fraction=0.25",
  ),
  ("mrpo_noise10", "rl.algorithm=mrpo,rl.label_noise=0.1"),
  ("mrpo_noise20", "rl.algorithm=mrpo,rl.label_noise=0.2"),
  ("mrpo_linear", "rl.algorithm=mrpo,rl.penalty=linear"),
  ("mrpo_tau1", "rl.algorithm=mrpo,rl.tau=1.0"),
)


def get_config(arg=None):
  args = config_utils.parse_arg(
    arg, parallel=1, seeds=3, core=False, test=False, only=""
  )
  c = ml_collections.ConfigDict()
  c.base = config_utils.synthmed_grid_base(_CONFIGS, args.test)
  c.seeds = tuple(range(args.seeds))
  runs = RUNS
  if args.core:
    runs = tuple(r for r in RUNS if r[0] in ("grpo", "gdpo", "mrpo"))
  if args.only:
    wanted = args.only.split("+")
    unknown = sorted(set(wanted) - {name for name, _ in RUNS})
    if unknown:
      raise ValueError(
        f"only={args.only}: unknown runs {unknown}; runs: "
        f"{[name for name, _ in RUNS]}"
      )
    runs = tuple(r for r in runs if r[0] in wanted)
  c.baseline = "grpo"
  pairs = (
    ("mrpo", "grpo"),
    ("mrpo", "gdpo"),
    ("mrpo_truth", "mrpo"),
    ("mrpo_hybrid", "mrpo"),
    ("mrpo_noise20", "mrpo"),
  )
  c.eval_every = 50
  c.parallel = args.parallel
  c.bootstrap_samples = 5000
  if args.test:
    c.seeds = tuple(range(min(args.seeds, 2)))
    runs = runs[:3]
    c.eval_every = 1
    c.bootstrap_samples = 200
  names = {name for name, _ in runs}
  c.runs = runs
  c.compare = tuple(p for p in pairs if set(p) <= names)
  c.lock()
  return c
