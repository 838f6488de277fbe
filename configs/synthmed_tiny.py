r"""The default main job: SFT warm start then MRPO on SynthMed, on a CPU.

  stepjax train --workdir=runs/synthmed
  stepjax train --config=configs/synthmed_tiny.py:algo=grpo --workdir=runs/g

Variants (comma-separated): algo=grpo|gdpo|mrpo; process=verifier|
value_head; test (a few-second run for the test suite).
"""

from stepjax import config_utils


def get_config(arg=None):
  args = config_utils.parse_arg(
    arg, algo="mrpo", process="verifier", test=False
  )
  c = config_utils.default_config()
  c.rl.algorithm = args.algo
  c.rl.process_source = args.process
  if args.test:
    c.model.preset = "tiny"
    c.data.num_train = 16
    c.data.num_eval = 8
    c.data.batch_size = 2
    c.sampling.group_size = 2
    c.sampling.max_new_tokens = 56
    c.sft.steps = 2
    c.sft.batch_size = 4
    c.train.steps = 2
    c.train.checkpoint_every = 1
  c.lock()
  return c
