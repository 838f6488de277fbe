"""One of two processes applying one RL update (run by the sharded test).

argv: update.pkl, output dir, coordinator address, process id. Each process
feeds its half of the rows (and its prompts' images); process 0 writes the
loss and the gathered parameters to output/result.pkl.
"""

import pathlib
import pickle
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

# This checkout's stepjax (not an installed copy), and trainer_utils.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).parent))
import trainer_utils  # noqa: E402

from stepjax import image_slots  # noqa: E402
from stepjax.train import loop  # noqa: E402


def local_rows(update, pid, nproc, group_size):
  """Process `pid`'s prompts: their G rows each and their image slots (the
  index numbered from 0 in each process, as each builds its own)."""
  total = update.seq.ids_BxL.shape[0] // group_size
  prompts = total // nproc
  mine = np.arange(pid * prompts, (pid + 1) * prompts)
  return image_slots.take_prompts(update, mine, total, group_size)


def main():
  update_path, out_dir, address, pid = sys.argv[1:5]
  pid = int(pid)
  config = trainer_utils.test_config(
    **{
      "sft.steps": 0,
      "train.steps": 1,
      "rl.beta": 0.04,
      "mesh.data": 1,
      "mesh.fsdp": 2,
      "mesh.tensor": 2,
      "sampling.max_new_tokens": 24,
      "optim.learning_rate": 1e-3,
      "optim.warmup_steps": 0,
      "distributed.initialize": "yes",
      "distributed.coordinator_address": address,
      "distributed.num_processes": 2,
      "distributed.process_id": pid,
    }
  )
  trainer = loop.Trainer(config, f"{out_dir}/proc{pid}")
  assert jax.process_count() == 2 and jax.device_count() == 4
  update = pickle.loads(open(update_path, "rb").read())
  phase = trainer.phases[-1]
  state = trainer.fresh_state(phase.tx)
  mine = local_rows(update, pid, 2, config.sampling.group_size)
  state, metrics = trainer.apply_update(state, phase, mine)
  params = jax.tree.map(
    lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
    state.params,
  )
  if pid == 0:
    result = {
      "loss": float(metrics["loss"]),
      "params": trainer_utils.flat_params(params),
    }
    with open(f"{out_dir}/result.pkl", "wb") as f:
      pickle.dump(result, f)


if __name__ == "__main__":
  main()
