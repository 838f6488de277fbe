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
  # Sized to finish in under 10 minutes on 2 CPU cores: ~1.3M-parameter
  # policy, 300 SFT steps of 16 examples, 150 RL steps of 4 prompts x 8.
  c.model.preset = "synthmed"
  c.data.num_train = 2048
  c.data.num_eval = 128
  c.data.eval_batch_size = 32
  c.sft.steps = 300
  c.sft.batch_size = 16
  c.sft.learning_rate = 3e-3
  c.train.steps = 150
  c.train.checkpoint_every = 25
  c.train.log_every = 10
  c.sampling.group_size = 8
  c.optim.learning_rate = 3e-4
  if args.test:
    c.model.preset = "tiny"
    c.data.num_train = 16
    c.data.num_eval = 8
    c.data.batch_size = 2
    c.data.eval_batch_size = 0
    c.sampling.group_size = 2
    c.sampling.max_new_tokens = 56
    c.sft.steps = 2
    c.sft.batch_size = 4
    c.train.steps = 2
    c.train.checkpoint_every = 1
    c.train.log_every = 1
  c.lock()
  return c
