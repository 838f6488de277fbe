"""Losses: hand examples, a loop-based numpy oracle, jit and grad."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.rl import bench, losses, process

# ---------------------------------------------------------------------------
# Independent numpy implementation (plain loops).


def np_policy_loss(logp, old, adv, mask, ref, eps_lo, eps_hi, beta, agg):
  b, t = logp.shape
  per = np.zeros((b, t))
  for i in range(b):
    for j in range(t):
      ratio = math.exp(logp[i, j] - old[i, j])
      clipped = min(max(ratio, 1 - eps_lo), 1 + eps_hi)
      v = -min(ratio * adv[i, j], clipped * adv[i, j])
      if ref is not None and beta:
        d = ref[i, j] - logp[i, j]
        v += beta * (math.exp(d) - d - 1)
      per[i, j] = v
  if agg == "seq_mean":
    rows = []
    for i in range(b):
      n = sum(mask[i])
      rows.append(sum(per[i, j] * mask[i, j] for j in range(t)) / max(n, 1))
    return sum(rows) / b
  total = sum(per[i, j] * mask[i, j] for i in range(b) for j in range(t))
  if agg == "token_mean":
    return total / max(mask.sum(), 1)
  return total / (b * t)


def np_entropy(logits):
  b, t, v = logits.shape
  out = np.zeros((b, t))
  for i in range(b):
    for j in range(t):
      z = logits[i, j] - logits[i, j].max()
      p = np.exp(z) / np.exp(z).sum()
      out[i, j] = -sum(p[k] * math.log(p[k]) for k in range(v) if p[k] > 0)
  return out


def np_step_bce(x, step_id, valid):
  b, t = step_id.shape
  total, n = 0.0, 0
  for i in range(b):
    for j in range(t):
      s = step_id[i, j]
      nxt = step_id[i, j + 1] if j + 1 < t else -1
      if s >= 0 and nxt != s:
        y = valid[i, s]
        p = 1 / (1 + math.exp(-x[i, j]))
        total += -(y * math.log(p) + (1 - y) * math.log(1 - p))
        n += 1
  return total / max(n, 1)


# ---------------------------------------------------------------------------


def test_policy_loss_hand_example():
  # One sequence, three tokens: ratios 1.5, 0.5, 1.0; A = +1, -1, +2.
  old = jnp.zeros((1, 3))
  logp = jnp.log(jnp.array([[1.5, 0.5, 1.0]]))
  adv = jnp.array([[1.0, -1.0, 2.0]])
  mask = jnp.ones((1, 3))
  loss, m = losses.policy_loss(
    logp, adv, mask, old_logp_BxT=old, beta=0.0, aggregation="token_mean"
  )
  # -min(1.5, 1.2) = -1.2; -min(-0.5, -0.8) = 0.8; -2.
  assert float(loss) == pytest.approx((-1.2 + 0.8 - 2.0) / 3, rel=1e-6)
  assert float(m["clip_frac_high"]) == pytest.approx(1 / 3)
  assert float(m["clip_frac_low"]) == pytest.approx(1 / 3)
  assert float(m["ratio_mean"]) == pytest.approx(1.0)
  assert "kl" not in m


def test_k3_kl_hand_example():
  kl = losses.k3_kl(jnp.array([0.0, -1.0]), jnp.array([0.0, 0.0]))
  # d = 0 -> 0; d = 1 -> e - 2.
  np.testing.assert_allclose(kl, [0.0, math.e - 2.0], rtol=1e-6)


def test_aggregations_hand_example():
  x = jnp.array([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0]])
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  assert float(losses.seq_mean(x, mask)) == pytest.approx((1.5 + 4.0) / 2)
  assert float(losses.token_mean(x, mask)) == pytest.approx(7.0 / 3)
  assert float(losses.constant(x, mask)) == pytest.approx(7.0 / 6)
  assert float(losses.constant(x, mask, 14.0)) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="rl.loss_aggregation"):
    losses.AGGREGATIONS.get("sum")


@pytest.mark.parametrize("agg", ["seq_mean", "token_mean", "constant"])
def test_policy_loss_matches_numpy_oracle(agg):
  rng = np.random.default_rng(0)
  b, t = 4, 9
  logp = -rng.exponential(size=(b, t))
  old = logp + 0.3 * rng.normal(size=(b, t))
  ref = logp + 0.2 * rng.normal(size=(b, t))
  adv = rng.normal(size=(b, t))
  mask = (rng.uniform(size=(b, t)) < 0.8).astype(np.float64)
  mask[0] = 0  # an empty row
  f = jax.jit(
    losses.policy_loss, static_argnames=("aggregation", "beta", "eps_low")
  )
  with jax.enable_x64(True):
    got, _ = f(
        logp, adv, mask, old, ref, eps_low=0.2, eps_high=0.28, beta=0.04,
        aggregation=agg,
    )  # fmt: skip
  want = np_policy_loss(logp, old, adv, mask, ref, 0.2, 0.28, 0.04, agg)
  assert abs(float(got) - want) <= 1e-6


def test_grad_wrt_logp_hand_example():
  # One pass (old = stop_gradient(logp)): ratio = 1, no clipping, so
  # d loss / d logp_t = (-A_t + beta (1 - exp(ref_t - logp_t))) * weight_t,
  # weight_t = mask / (n_b * B) for seq_mean.
  logp = jnp.array([[-1.0, -2.0, -0.5], [-0.3, -0.2, -0.1]])
  ref = jnp.array([[-1.5, -2.0, -0.4], [-0.3, -0.1, -0.1]])
  adv = jnp.array([[1.0, -2.0, 0.5], [0.3, 0.0, 7.0]])
  mask = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
  beta = 0.1

  def f(lp):
    return losses.policy_loss(lp, adv, mask, ref_logp_BxT=ref, beta=beta)[0]

  g = jax.jit(jax.grad(f))(logp)
  weight = mask / (mask.sum(axis=1, keepdims=True) * 2)
  want = (-adv + beta * (1 - jnp.exp(ref - logp))) * weight
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)
  loss, m = jax.jit(
    lambda lp: losses.policy_loss(lp, adv, mask, ref_logp_BxT=ref, beta=beta)
  )(logp)
  assert np.isfinite(float(loss)) and float(m["kl"]) > 0


def test_entropy_and_sft():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 5))
  logits[0, 0, 1] = -np.inf  # a masked-out vocabulary entry
  ent, mean = jax.jit(losses.entropy_from_logits)(logits, jnp.ones((2, 3)))
  np.testing.assert_allclose(ent, np_entropy(logits), rtol=1e-5)
  assert float(mean) == pytest.approx(np_entropy(logits).mean(), rel=1e-5)
  # Uniform logits: entropy log V.
  ent_u, _ = losses.entropy_from_logits(jnp.zeros((1, 1, 8)))
  assert float(ent_u[0, 0]) == pytest.approx(math.log(8), rel=1e-6)
  # SFT: CE of target under softmax, masked.
  lg = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
  loss, m = losses.sft_loss(lg, jnp.array([[0, 2]]), jnp.array([[1, 1]]))
  assert float(loss) == pytest.approx(-(math.log(0.5) + math.log(0.1)) / 2)
  assert float(m["accuracy"]) == pytest.approx(0.5)
  loss1, _ = losses.sft_loss(lg, jnp.array([[0, 2]]), jnp.array([[1, 0]]))
  assert float(loss1) == pytest.approx(-math.log(0.5), rel=1e-6)


def test_step_value_loss():
  step_id = np.array([[-1, 0, 0, 1, 1, -1, 2], [0, 0, -1, -1, -1, -1, -1]])
  valid = np.array([[1, 0, 1], [0, 0, 0]])
  x = np.array(
    [[9.0, 9.0, 2.0, 9.0, -1.0, 9.0, 0.5], [9.0, 3.0, 9.0, 9, 9, 9, 9]]
  )
  ends = losses.step_end_mask(jnp.asarray(step_id))
  np.testing.assert_array_equal(
    ends,
    [[0, 0, 1, 0, 1, 0, 1], [0, 1, 0, 0, 0, 0, 0]],
  )
  valid_BxT = process.token_labels(step_id, valid)
  loss, m = jax.jit(losses.step_value_loss)(x, step_id, valid_BxT)
  assert float(loss) == pytest.approx(np_step_bce(x, step_id, valid), rel=1e-6)
  assert float(m["num_labels"]) == 4
  # ends: 2.0 (y=1 ok), -1.0 (y=0 ok), 0.5 (y=1 ok), 3.0 (y=0 wrong).
  assert float(m["accuracy"]) == pytest.approx(0.75)
  loss_masked, m2 = losses.step_value_loss(
    x, step_id, valid_BxT, np.array([1, 0])
  )
  assert float(m2["num_labels"]) == 3
  np.testing.assert_allclose(
    losses.step_logits(jnp.asarray(x), jnp.asarray(step_id), 4),
    [[2.0, -1.0, 0.5, 0.0], [3.0, 0.0, 0.0, 0.0]],
  )
  # Too few slots drop the steps past them; nothing folds into the last.
  np.testing.assert_allclose(
    losses.step_logits(jnp.asarray(x), jnp.asarray(step_id), 2),
    [[2.0, -1.0], [3.0, 0.0]],
  )
  g = jax.grad(lambda v: losses.step_value_loss(v, step_id, valid_BxT)[0])(x)
  assert np.all(np.asarray(g)[~np.asarray(ends)] == 0)


def test_bench_small():
  out = bench.bench(batch=8, seq=32, vocab=64, group_size=4, k_pad=4, iters=2)
  assert out["adv_loss_grad_ms"] > 0 and out["entropy_ms"] > 0
