"""Advantages: hand examples, a loop-based numpy oracle, properties, jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepjax import config_checks
from stepjax.rl import advantages

# ---------------------------------------------------------------------------
# Independent numpy implementation of the spec's formulas (plain loops).


def np_group_norm(r, g, scale=True, eps=1e-4):
  out = np.zeros(len(r))
  for start in range(0, len(r), g):
    grp = [float(x) for x in r[start : start + g]]
    mean = sum(grp) / g
    var = sum((x - mean) ** 2 for x in grp) / (g - 1) if g > 1 else 0.0
    for j, x in enumerate(grp):
      out[start + j] = (
        (x - mean) / (math.sqrt(var) + eps) if scale else x - mean
      )
  return out


def np_gdpo(r_bxc, w, g, eps=1e-4):
  b, c = r_bxc.shape
  summed = np.zeros(b)
  for j in range(c):
    col = np_group_norm(r_bxc[:, j], g, True, eps)
    for i in range(b):
      summed[i] += w[j] * col[i]
  mean = sum(summed) / b
  std = math.sqrt(sum((x - mean) ** 2 for x in summed) / (b - 1))
  return np.array([(x - mean) / (std + eps) for x in summed])


def np_penalty(k, big_k, name):
  if big_k <= 1:
    return 1.0
  pos = (k - 1) / (big_k - 1)
  if name == "exp":
    return math.exp(1 - pos)
  if name == "exp_rounded":
    return round(math.exp(1 - pos), 2)
  return 1 + (math.e - 1) * (1 - pos)


def np_mrpo(
  adv, r_ans, step_id, num_steps, valid, tau, name="exp", valid_steps="abs"
):
  b, t = step_id.shape
  out = np.zeros((b, t))
  for i in range(b):
    for j in range(t):
      s = int(step_id[i, j])
      if r_ans[i] > tau or s < 0 or valid[i, s] < 0:
        out[i, j] = adv[i]
      elif valid[i, s]:
        out[i, j] = abs(adv[i]) if valid_steps == "abs" else adv[i]
      else:
        out[i, j] = -np_penalty(s + 1, int(num_steps[i]), name) * abs(adv[i])
  return out


def random_steps(rng, b, t, k_pad):
  """Random contiguous step layouts with -1 gaps, and their K."""
  step_id = np.full((b, t), -1, np.int32)
  num_steps = np.zeros(b, np.int32)
  for i in range(b):
    k = int(rng.integers(0, k_pad + 1))
    pos = int(rng.integers(0, 3))
    for s in range(k):
      n = int(rng.integers(1, 4))
      if pos + n > t:
        k = s
        break
      step_id[i, pos : pos + n] = s
      pos += n + int(rng.integers(0, 2))
    num_steps[i] = k
  return step_id, num_steps


# ---------------------------------------------------------------------------
# Hand-computed examples.


def test_grpo_hand_example():
  r = np.array([1.0, 0.0, 0.0, 0.0, 2.0, 2.0], np.float32)
  a = advantages.grpo(r, group_size=3)
  # Group 1: mean 1/3, sample std sqrt(1/3).
  s = math.sqrt(1 / 3)
  want = [(2 / 3) / (s + 1e-4), (-1 / 3) / (s + 1e-4), (-1 / 3) / (s + 1e-4)]
  np.testing.assert_allclose(a[:3], want, rtol=1e-6)
  # Group 2: (0, 2, 2): mean 4/3, std sqrt(4/3).
  s2 = math.sqrt(4 / 3)
  want2 = [(-4 / 3) / (s2 + 1e-4), (2 / 3) / (s2 + 1e-4), (2 / 3) / (s2 + 1e-4)]
  np.testing.assert_allclose(a[3:], want2, rtol=1e-6)
  np.testing.assert_allclose(
    advantages.grpo_no_std(r, 3),
    [2 / 3, -1 / 3, -1 / 3, -4 / 3, 2 / 3, 2 / 3],
    rtol=1e-6,
  )


def test_grpo_equal_rewards_give_zero():
  a = advantages.grpo(np.ones(4, np.float32), group_size=4)
  np.testing.assert_array_equal(a, np.zeros(4))


def test_grpo_weights_components():
  r = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  a = advantages.grpo(r, 2, weights_C=np.array([2.0, 1.0]))
  # Sums 2 and 1: mean 1.5, std sqrt(0.5).
  s = math.sqrt(0.5) + 1e-4
  np.testing.assert_allclose(a, [0.5 / s, -0.5 / s], rtol=1e-6)


def test_gdpo_hand_example():
  r = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]], np.float32)
  a = advantages.gdpo(r, group_size=2)
  # Group-normalised columns: g1 col0 (+c, -c), col1 (0, 0); g2 col0 (0, 0),
  # col1 (+c, -c) with c = 0.5 / (sqrt(0.5) + 1e-4). Sums: c, -c, c, -c.
  c = 0.5 / (math.sqrt(0.5) + 1e-4)
  std = math.sqrt(4 * c * c / 3)
  np.testing.assert_allclose(
    a, np.array([c, -c, c, -c]) / (std + 1e-4), rtol=1e-6
  )


def test_bad_group_size_message():
  with pytest.raises(ValueError, match="multiple of G"):
    advantages.grpo(np.zeros(5, np.float32), group_size=2)


def test_registries():
  assert advantages.get_estimator("mrpo") is advantages.grpo
  assert advantages.get_estimator("gdpo") is advantages.gdpo
  assert set(advantages.PENALTIES.names()) == {"exp", "exp_rounded", "linear"}
  with pytest.raises(ValueError, match="rl.penalty"):
    advantages.PENALTIES.get("cubic")
  assert set(advantages.VALID_STEP_RULES.names()) == {"abs", "keep"}
  # config_checks (no jax import) lists the same names.
  assert set(config_checks.PENALTIES) == set(advantages.PENALTIES.names())
  assert set(config_checks.VALID_STEP_RULES) == set(
    advantages.VALID_STEP_RULES.names()
  )
  with pytest.raises(ValueError, match="rl.valid_step_advantage"):
    advantages.VALID_STEP_RULES.get("zero")


def _algorithm_inputs(seed=0, b=6, t=9, k_pad=16):
  rng = np.random.default_rng(seed)
  num_steps = rng.integers(1, 5, size=b)
  step_id = np.full((b, t), -1, np.int32)
  for i, k in enumerate(num_steps):
    step_id[i, 1 : 1 + 2 * k] = np.repeat(np.arange(k), 2)
  return advantages.AdvantageInputs(
    rewards_BxC=rng.normal(size=(b, 3)).astype(np.float32),
    answer_reward_B=rng.choice([0.0, 1.0], size=b).astype(np.float32),
    step_id_BxT=step_id,
    num_steps_B=num_steps.astype(np.int32),
    step_valid_BxK=rng.integers(0, 2, size=(b, k_pad)).astype(np.int32),
    has_labels_B=np.array([1, 1, 0, 1, 1, 1], np.int32),
  )


@pytest.mark.parametrize("name", ["grpo", "grpo_no_std", "gdpo", "mrpo"])
def test_algorithms_are_their_estimator_then_layout(name):
  """Each `rl.algorithm` is its estimator's A_i laid over the tokens:
  every token for grpo / gdpo, MRPO's step shaping for mrpo; jitted."""
  inputs = _algorithm_inputs()
  weights = (1.0, 0.5, 2.0)
  run = jax.jit(
    lambda x: advantages.ALGORITHMS.get(name)(
      x, 2, weights, advantages.AlgorithmOptions(penalty="linear")
    )
  )
  adv_B, adv_BxT = run(inputs)
  want_B = advantages.get_estimator(name)(
    inputs.rewards_BxC, 2, jnp.asarray(weights), scale_by_std=True
  )
  np.testing.assert_allclose(adv_B, want_B, rtol=1e-6)
  if name == "mrpo":
    want_BxT = advantages.mrpo_shape(
      want_B,
      inputs.answer_reward_B,
      inputs.step_id_BxT,
      inputs.num_steps_B,
      inputs.step_valid_BxK,
      tau=0.6,
      penalty="linear",
      has_labels_B=inputs.has_labels_B,
    )
    assert not np.allclose(want_BxT, advantages.broadcast(want_B, 9))
  else:
    want_BxT = advantages.broadcast(want_B, 9)
  np.testing.assert_allclose(adv_BxT, want_BxT, rtol=1e-6)


def test_algorithm_registry_names_the_config_key():
  assert set(advantages.ALGORITHMS.names()) == {
    "grpo",
    "grpo_no_std",
    "gdpo",
    "mrpo",
  }
  with pytest.raises(ValueError, match="rl.algorithm"):
    advantages.ALGORITHMS.get("ppo")


def test_mrpo_hand_example():
  # Row 0: R_ans 0.2 <= tau, A = -0.5, K = 3: steps valid, invalid, invalid.
  # Row 1: R_ans 0.9 > tau: untouched. Row 2: K = 1, invalid.
  step_id = np.array(
    [
      [-1, 0, 0, 1, -1, 2, -1],
      [-1, 0, 1, 1, 2, -1, -1],
      [-1, 0, 0, -1, -1, -1, -1],
    ],
    np.int32,
  )
  valid = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0]], np.int32)
  out = advantages.mrpo_shape(
    np.array([-0.5, 1.0, 2.0]),
    np.array([0.2, 0.9, 0.0]),
    step_id,
    np.array([3, 3, 1]),
    valid,
    tau=0.6,
  )
  e15 = math.exp(0.5)  # step 2 of 3: exp(1 - 1/2)
  want = np.array(
    [
      [-0.5, 0.5, 0.5, -e15 * 0.5, -0.5, -1.0 * 0.5, -0.5],
      [1.0] * 7,
      [2.0, -2.0, -2.0, 2.0, 2.0, 2.0, 2.0],
    ]
  )
  np.testing.assert_allclose(out, want, rtol=1e-6)
  rounded = advantages.mrpo_shape(
      np.array([-0.5]), np.array([0.0]), step_id[:1], np.array([3]),
      valid[:1], penalty="exp_rounded",
  )  # fmt: skip
  assert float(rounded[0, 3]) == pytest.approx(-1.65 * 0.5, rel=1e-6)
  # First-step multiplier is e, last 1.
  first = advantages.exp_penalty(jnp.array(1), jnp.array(5))
  last = advantages.exp_penalty(jnp.array(5), jnp.array(5))
  assert float(first) == pytest.approx(math.e) and float(last) == 1.0


def test_mrpo_keep_rule_reshapes_only_invalid_steps():
  # The hand example's row 0 (A = -0.5, steps valid, invalid, invalid):
  # under "keep" the valid step keeps -0.5 instead of +0.5; the invalid
  # steps' penalties and the success row are as under the spec's rule.
  step_id = np.array(
    [[-1, 0, 0, 1, -1, 2, -1], [-1, 0, 1, 1, 2, -1, -1]], np.int32
  )
  valid = np.array([[1, 0, 0], [1, 1, 1]], np.int32)
  args = (
    np.array([-0.5, 1.0]), np.array([0.2, 0.9]), step_id, np.array([3, 3]),
    valid,
  )  # fmt: skip
  keep = advantages.mrpo_shape(*args, valid_steps="keep")
  spec = advantages.mrpo_shape(*args)
  e15 = math.exp(0.5)
  want = [-0.5, -0.5, -0.5, -e15 * 0.5, -0.5, -0.5, -0.5]
  np.testing.assert_allclose(keep[0], want, rtol=1e-6)
  np.testing.assert_allclose(spec[0, 1:3], [0.5, 0.5], rtol=1e-6)
  np.testing.assert_allclose(keep[0, 3:], spec[0, 3:], rtol=1e-6)
  np.testing.assert_array_equal(keep[1], spec[1])
  # A positive A_i (a wrong answer still above its group): both rules agree.
  pos = advantages.mrpo_shape(
      np.array([0.5]), np.array([0.0]), step_id[:1], np.array([3]),
      valid[:1], valid_steps="keep",
  )  # fmt: skip
  np.testing.assert_allclose(pos[0, 1:3], [0.5, 0.5], rtol=1e-6)


def test_mrpo_skipped_labels_keep_advantage():
  step_id = np.array([[0, 0, 1]], np.int32)
  out = advantages.mrpo_shape(
      np.array([-1.0]), np.array([0.0]), step_id, np.array([2]),
      np.zeros((1, 2), np.int32), has_labels_B=np.array([0]),
  )  # fmt: skip
  np.testing.assert_array_equal(out, [[-1.0, -1.0, -1.0]])


def test_mrpo_unlabelled_steps_keep_advantage():
  # Row 0 of the hand example with its second step unlabelled (-1, the
  # head abstained): that step keeps A_i = -0.5; the valid first step
  # still gets +0.5 and the invalid third step its penalty, m(3, 3) = 1.
  step_id = np.array([[-1, 0, 0, 1, -1, 2, -1]], np.int32)
  out = advantages.mrpo_shape(
      np.array([-0.5]), np.array([0.2]), step_id, np.array([3]),
      np.array([[1, -1, 0]], np.int32),
  )  # fmt: skip
  np.testing.assert_allclose(
    out[0], [-0.5, 0.5, 0.5, -0.5, -0.5, -0.5, -0.5], rtol=1e-6
  )


# ---------------------------------------------------------------------------
# The numpy oracle agrees on random inputs.


# Compared in float64 (jax x64) so that the 1e-6 bound measures the
# formulas, not float32 cancellation in (R - mean) for close rewards. In
# float32 the agreement is ~1e-6 relative to the reward scale.


@pytest.mark.parametrize(
  "penalty,valid_steps",
  [("exp", "abs"), ("exp_rounded", "abs"), ("linear", "abs"), ("exp", "keep")],
)
def test_mrpo_matches_numpy_oracle(penalty, valid_steps):
  rng = np.random.default_rng(0)
  b, t, k_pad, g = 16, 40, 8, 4
  shape = jax.jit(
    advantages.mrpo_shape, static_argnames=("penalty", "tau", "valid_steps")
  )
  for x64 in (True, False):
    tol = 1e-6 if x64 else 1e-5
    with jax.enable_x64(x64):
      for _ in range(4):
        r = rng.normal(size=b)
        r_ans = rng.uniform(size=b)
        step_id, num_steps = random_steps(rng, b, t, k_pad)
        # -1: a step left unlabelled (the value head abstained).
        valid = rng.integers(-1, 2, size=(b, k_pad)).astype(np.int32)
        adv = advantages.grpo(r, g)
        np.testing.assert_allclose(adv, np_group_norm(r, g), atol=tol, rtol=tol)
        got = shape(
            adv, r_ans, step_id, num_steps, valid, 0.6, penalty,
            valid_steps=valid_steps,
        )  # fmt: skip
        want = np_mrpo(
            np.asarray(adv, np.float64), r_ans, step_id, num_steps, valid,
            0.6, penalty, valid_steps,
        )  # fmt: skip
        np.testing.assert_allclose(got, want, atol=tol, rtol=tol)


@jax.enable_x64(True)
def test_estimators_match_numpy_oracle():
  rng = np.random.default_rng(1)
  grpo = jax.jit(advantages.grpo, static_argnames=("group_size",))
  gdpo = jax.jit(advantages.gdpo, static_argnames=("group_size",))
  no_std = jax.jit(advantages.grpo_no_std, static_argnames=("group_size",))
  for g in (2, 8):
    r = rng.normal(size=(32, 3))
    w = rng.uniform(size=3)
    np.testing.assert_allclose(
      gdpo(r, g, w), np_gdpo(r, w, g), atol=1e-6, rtol=1e-6
    )
    summed = r.astype(np.float64) @ w
    np.testing.assert_allclose(
      grpo(r, g, w), np_group_norm(summed, g), atol=1e-6, rtol=1e-6
    )
    np.testing.assert_allclose(
      no_std(r, g, w),
      np_group_norm(summed, g, scale=False),
      atol=1e-6,
      rtol=1e-6,
    )


# ---------------------------------------------------------------------------
# Properties.

T, K_PAD = 12, 4
_shape_jit = jax.jit(advantages.mrpo_shape, static_argnames=("penalty", "tau"))


@st.composite
def completions(draw):
  b = 3
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  step_id, num_steps = random_steps(rng, b, T, K_PAD)
  adv = np.array(
    draw(st.lists(st.floats(-3, 3, width=32), min_size=b, max_size=b)),
    np.float32,
  )
  r_ans = np.array(
    draw(st.lists(st.floats(0, 1, width=32), min_size=b, max_size=b)),
    np.float32,
  )
  valid = rng.integers(0, 2, size=(b, K_PAD)).astype(np.int32)
  return adv, r_ans, step_id, num_steps, valid


@settings(max_examples=60, deadline=None)
@given(completions())
def test_property_success_untouched_and_outside_steps_kept(c):
  adv, r_ans, step_id, num_steps, valid = c
  out = np.asarray(_shape_jit(adv, r_ans, step_id, num_steps, valid, tau=0.6))
  for i in range(len(adv)):
    if r_ans[i] > 0.6:
      np.testing.assert_array_equal(out[i], np.full(T, adv[i]))
    outside = step_id[i] < 0
    np.testing.assert_array_equal(out[i][outside], adv[i])


@settings(max_examples=60, deadline=None)
@given(completions())
def test_property_all_valid_gives_abs(c):
  adv, _, step_id, num_steps, _ = c
  r_ans = np.zeros_like(adv)
  out = np.asarray(
    _shape_jit(adv, r_ans, step_id, num_steps, np.ones((3, K_PAD), np.int32))
  )
  inside = step_id >= 0
  np.testing.assert_allclose(
    out[inside], np.broadcast_to(np.abs(adv)[:, None], out.shape)[inside]
  )


_penalty_jit = jax.jit(advantages.mrpo_shape, static_argnames=("penalty",))


@settings(max_examples=60, deadline=None)
@given(
  st.integers(2, 12),
  st.floats(0.015625, 3, width=32),
  st.sampled_from(["exp", "exp_rounded", "linear"]),
)
def test_property_earlier_invalid_step_penalised_more(k, a, penalty):
  # K steps of one token each (padded to 12), all invalid; the same |A|.
  step_id = np.where(np.arange(12) < k, np.arange(12), -1)[None]
  out = np.asarray(
    _penalty_jit(
      np.array([a], np.float32),
      np.zeros(1, np.float32),
      step_id,
      np.array([k]),
      np.zeros((1, 12), np.int32),
      penalty=penalty,
    )  # fmt: skip
  )[0, :k]
  assert np.all(out < 0)
  assert np.all(np.diff(out) >= 0)  # later steps: smaller penalty
  assert out[0] < out[-1]
  assert out[-1] == pytest.approx(-a, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(
  st.lists(st.floats(-5, 5, width=32), min_size=8, max_size=8),
  st.sampled_from([2, 4, 8]),
)
def test_property_grpo_groups_sum_to_zero(r, g):
  a = np.asarray(advantages.grpo(np.array(r, np.float32), g))
  sums = a.reshape(-1, g).sum(axis=1)
  np.testing.assert_allclose(sums, 0.0, atol=1e-4)


def test_jit_and_grad():
  rng = np.random.default_rng(2)
  r = jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)
  step_id, num_steps = random_steps(rng, 8, 16, 4)
  valid = rng.integers(0, 2, (8, 4))

  def f(r):
    adv = advantages.grpo(r, 4)
    shaped = advantages.mrpo_shape(
      adv, r[:, 0], step_id, num_steps, valid, tau=0.6
    )
    return jnp.sum(shaped**2) + jnp.sum(advantages.gdpo(r, 4) ** 2)

  val, grad = jax.jit(jax.value_and_grad(f))(r)
  assert np.isfinite(val) and np.all(np.isfinite(grad))
  assert float(val) == pytest.approx(float(f(r)), rel=1e-5)
