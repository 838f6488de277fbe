"""One of two processes sampling a split batch (run by the split test).

argv: output dir, coordinator address, process id. Two processes with two
CPU devices each form a 4-way data mesh. Each process passes only its own
four prompts to `train.rollout.generate`, and checks the completions it gets
back against the whole batch sampled unsplit on its own first device
(tokens equal, log-probs within 1e-5); it writes what it found to
output/proc{id}.json.
"""

import json
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from stepjax import image_slots  # noqa: E402
from stepjax.sampling import sampler  # noqa: E402
from stepjax.train import rollout, sharding  # noqa: E402
from tests.sampling import split_setup  # noqa: E402


def main():
  out_dir, address, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(address, num_processes=2, process_id=pid)
  assert jax.process_count() == 2 and jax.device_count() == 4
  cfg, graphdef, params = split_setup.model()
  whole = split_setup.batch(cfg)
  rng = jax.random.key(split_setup.SEED)
  with jax.default_device(jax.local_devices()[0]):
    want = jax.device_get(
      sampler.generate(
        graphdef, params, sampler.prepare_inputs(whole, cfg), rng,
        **{**split_setup.sampler_kwargs(cfg), "eos_ids": (cfg.eos_token_id,)},
      )
    )  # fmt: skip
  mesh = sharding.make_mesh({"data": 4, "fsdp": 1, "tensor": 1})
  replicated = sharding.replicated(mesh)

  def replicate(x):
    host = np.asarray(x)
    return jax.make_array_from_callback(
      host.shape, replicated, lambda idx: host[idx]
    )

  placed = jax.tree.map(replicate, params)
  half = split_setup.NUM_PROMPTS // 2
  mine = image_slots.take_prompts(
    whole, np.arange(pid * half, (pid + 1) * half), split_setup.NUM_PROMPTS
  )  # this process's prompts, their image index numbered from 0
  graphs, tok_info, sampling = split_setup.rollout_args(cfg, graphdef)
  got = rollout.generate(
    graphs, tok_info, sampling, placed, mine, rng,
    group_size=split_setup.GROUP, temperature=1.0, mesh=mesh,
  )  # fmt: skip
  rows = half * split_setup.GROUP
  expect = jax.tree.map(lambda x: x[pid * rows : (pid + 1) * rows], want)
  result = {
    "rows": int(got.tokens_BxR.shape[0]),
    "tokens_equal": bool(np.array_equal(got.tokens_BxR, expect.tokens_BxR)),
    "mask_equal": bool(np.array_equal(got.mask_BxR, expect.mask_BxR)),
    "max_logp_diff": float(np.max(np.abs(got.logp_BxR - expect.logp_BxR))),
    "generated": int(expect.mask_BxR.sum()),
  }
  pathlib.Path(out_dir, f"proc{pid}.json").write_text(json.dumps(result))


if __name__ == "__main__":
  main()
