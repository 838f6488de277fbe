"""Cost of the RL math per update: advantages + policy loss, and entropy.

`bench()` times, under jit on the default backend, (1) GRPO advantages +
MRPO shaping + the PPO-clip/KL loss forward and gradient w.r.t. the
log-probs for B x T tokens, and (2) the entropy of B x T x V logits.
Run `python -m stepjax.rl.bench [B T V]`.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from stepjax.rl import advantages, losses


def _time(fn, *args, iters: int) -> tuple[float, float]:
  """(compile + first run seconds, median seconds of `iters` runs)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times))


def bench(
  batch: int = 64,
  seq: int = 512,
  vocab: int = 4096,
  group_size: int = 8,
  k_pad: int = 32,
  iters: int = 10,
  seed: int = 0,
) -> dict[str, float]:
  """Times the per-update RL math; returns milliseconds and sizes."""
  rng = np.random.default_rng(seed)
  rewards_BxC = jnp.asarray(rng.uniform(size=(batch, 3)), jnp.float32)
  answer_B = rewards_BxC[:, 0]
  step_id_BxT = np.full((batch, seq), -1, np.int32)
  num_steps_B = rng.integers(1, k_pad + 1, size=batch).astype(np.int32)
  for i, k in enumerate(num_steps_B):
    bounds = np.linspace(8, seq - 32, k + 1).astype(int)
    for s in range(k):
      step_id_BxT[i, bounds[s] : bounds[s + 1] - 1] = s
  valid_BxK = jnp.asarray(rng.integers(0, 2, (batch, k_pad)), jnp.int32)
  mask_BxT = jnp.ones((batch, seq), jnp.float32)
  logp_BxT = jnp.asarray(-rng.exponential(size=(batch, seq)), jnp.float32)
  ref_BxT = logp_BxT + 0.01 * jnp.asarray(rng.normal(size=(batch, seq)))

  @jax.jit
  def update(logp, rewards, answer, step_id, num_steps, valid, mask, ref):
    adv_B = advantages.grpo(rewards, group_size)
    adv_BxT = advantages.mrpo_shape(
      adv_B, answer, step_id, num_steps, valid, tau=0.6
    )

    def loss_fn(lp):
      return losses.policy_loss(lp, adv_BxT, mask, ref_logp_BxT=ref, beta=0.04)

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(logp)
    return loss, metrics, grad

  args = (
      logp_BxT, rewards_BxC, answer_B, jnp.asarray(step_id_BxT),
      jnp.asarray(num_steps_B), valid_BxK, mask_BxT, ref_BxT,
  )  # fmt: skip
  first_u, upd = _time(update, *args, iters=iters)

  logits = jnp.asarray(rng.normal(size=(batch, seq, vocab)).astype(np.float32))
  ent = jax.jit(lambda x, m: losses.entropy_from_logits(x, m)[1])
  first_e, ent_t = _time(ent, logits, mask_BxT, iters=max(3, iters // 2))
  return {
    "backend": jax.default_backend(),
    "batch": batch,
    "seq": seq,
    "vocab": vocab,
    "adv_loss_grad_ms": upd * 1e3,
    "adv_loss_grad_compile_s": first_u,
    "entropy_ms": ent_t * 1e3,
    "entropy_compile_s": first_e,
  }


def main(argv: list[str]) -> dict:
  sizes = [int(a) for a in argv[1:4]]
  result = bench(*sizes)
  for k, v in result.items():
    print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
  return result


if __name__ == "__main__":
  main(sys.argv)
