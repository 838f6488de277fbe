r"""RL from an SFT start whose vision tower was pretrained: GRPO vs MRPO.

  stepjax experiment --config=configs/experiments/synthmed_pretrained.py \
      --workdir=runs/synthmed_pretrained

Every earlier SynthMed grid started RL from a policy that reads lesions
poorly or not at all (docs/results/diagnosis, sections 7-11): the language
model reads a clean signal fast (section 12: synthetic features that name
each organ's lesion status are read right 100% of the time after 400
steps), but a tower trained through SFT's cross-entropy carries lesions too
weakly for it. Here each seed's SFT first pretrains the tower alone on
per-token organ and lesion labels (`sft.vision_pretrain_steps`), then keeps
it fixed through SFT (`sft.freeze_vision`) and RL (`rl.freeze_vision`):
the policy sees what the pretrained encoder sees, as a VLM built on a
pretrained image encoder does. SFT: 1500 steps with 6144 extra findings
scans (`sft.findings_scans`, targets naming every organ's lesion count).
RL is the default job's: 150 steps of 4 prompts x G = 8 per run.

  grpo, mrpo   the comparison

Variants (comma-separated): parallel=N, seeds=N (the first N of 0, 1, ...),
test (the tiny model, seconds per run).
"""

import pathlib

from stepjax import config_utils

_HERE = pathlib.Path(__file__).resolve().parent

VISION_PRETRAIN_STEPS = 2000


def get_config(arg=None):
  """synthmed_grounded.py's grid (same SFT length, findings scans, runs
  and comparison) with the pretrained, frozen tower in place of the
  grounding readout."""
  c = config_utils.load_config_file(_HERE / "synthmed_grounded.py", arg)
  c.unlock()
  base = c.base
  base.sft.grounding_weight = 0.0
  base.sft.vision_pretrain_steps = VISION_PRETRAIN_STEPS
  base.sft.freeze_vision = True
  base.rl.freeze_vision = True
  if base.sft.steps <= 2:  # the :test variant
    base.sft.vision_pretrain_steps = 2
    base.sft.vision_pretrain_scans = 16
    base.sft.vision_pretrain_eval_scans = 16
  c.lock()
  return c
