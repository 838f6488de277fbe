"""Each group's prompt run once (`steps.shared_prompt_forward`, the RL
default `rl.share_prompt`) computes the same loss, gradients and log-probs
as running every row whole, on a real rollout of the tiny policy."""

import dataclasses

import jax
import numpy as np
import pytest

from stepjax.train import loop, steps

from . import trainer_utils


def _trainer(workdir, **overrides):
  config = trainer_utils.test_config(
    **{
      "mesh.data": 1,
      "sft.steps": 0,
      "train.steps": 1,
      "rl.beta": 0.04,
      "sampling.group_size": 4,
      "sampling.max_new_tokens": 24,
      **overrides,
    }
  )
  return loop.Trainer(config, str(workdir))


def _rollout(trainer):
  phase = trainer.phases[-1]
  state = trainer.fresh_state(phase.tx)
  trainer.ref_params = jax.tree.map(lambda x: x * 1.01, state.params)
  batch = next(iter(phase.dataset))
  update, _ = trainer.rollout(state, batch, step=0)
  # Random advantages and labels, so every term of the loss moves.
  rng = np.random.default_rng(0)
  mask = np.asarray(update.seq.loss_mask_BxL)
  update = update.replace(
    adv_BxL=(rng.normal(size=mask.shape) * mask).astype(np.float32),
    value_labels=update.value_labels.replace(
      label_mask_B=np.ones(mask.shape[0], np.int32)
    ),
  )
  return state, trainer.place(update), batch["prompt_ids_BxT"].shape[1]


# remat through the cache path, the constant normaliser, old log-probs
_REMAT = {
  "rl.loss_aggregation": "constant",
  "model.remat": True,
  "rl.num_iterations": 2,
}


@pytest.fixture(scope="module")
def remat_rollout(tmp_path_factory):
  trainer = _trainer(tmp_path_factory.mktemp("remat"), **_REMAT)
  try:
    yield (trainer, *_rollout(trainer))
  finally:
    trainer.writer.close()
    trainer.checkpointer.close()


def test_shared_prompt_equals_whole_rows(remat_rollout):
  _check_shared_equals_whole(*remat_rollout)


@pytest.mark.slow
def test_shared_prompt_equals_whole_rows_at_the_defaults(tmp_path):  # ~45 s
  trainer = _trainer(tmp_path)
  try:
    _check_shared_equals_whole(trainer, *_rollout(trainer))
  finally:
    trainer.writer.close()
    trainer.checkpointer.close()


def _check_shared_equals_whole(trainer, state, update, t):
  g = trainer.config.sampling.group_size
  ids = np.asarray(update.seq.ids_BxL)
  # The premise: a group's rows share their first t columns.
  assert (ids[:, :t].reshape(-1, g, t) == ids[::g, None, :t]).all()
  whole = steps.options_from_config(trainer.config)
  shared = dataclasses.replace(whole, prompt_len=t)
  grad_fn = jax.jit(
    jax.value_and_grad(steps.rl_loss, has_aux=True),
    static_argnames=("graphs", "opts"),
  )
  results = [
    grad_fn(state.trainables(), update, graphs=trainer.graphs, opts=o)
    for o in (whole, shared)
  ]
  (loss_a, m_a), grads_a = results[0]
  (loss_b, m_b), grads_b = results[1]
  assert abs(float(loss_a)) > 1e-3
  np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5, atol=1e-7)
  for key in ("kl", "entropy", "value_loss", "clip_frac"):
    np.testing.assert_allclose(m_b[key], m_a[key], rtol=1e-4, atol=1e-6)
  flat_a = jax.tree.leaves(grads_a)
  flat_b = jax.tree.leaves(grads_b)
  scale = max(float(np.abs(x).max()) for x in flat_a)
  worst = max(float(np.abs(a - b).max()) for a, b in zip(flat_a, flat_b))
  assert scale > 0 and worst <= 1e-4 * scale, (worst, scale)
  logp_a, s_a = steps.sequence_logp(trainer.graphs, state.params, update.seq, g)
  logp_b, s_b = steps.sequence_logp(
    trainer.graphs, state.params, update.seq, g, t
  )
  assert (s_a, s_b) == (1, t)
  real = np.asarray(update.seq.loss_mask_BxL)[:, t:] > 0
  np.testing.assert_allclose(
    np.asarray(logp_b)[real],
    np.asarray(logp_a)[:, t - 1 :][real],
    rtol=1e-5,
    atol=1e-5,
  )


def test_value_loss_reaches_the_policy_only_when_asked(remat_rollout):
  """rl.value_shapes_policy: with zero advantages and no KL the policy's
  gradient is the value loss's alone, so it is exactly zero when the head
  reads stopped hidden states and grows linearly with the value weight
  when it does not; the head's own gradient is the same either way."""
  trainer, state, update, t = remat_rollout
  # The tiny policy's random completions have no steps: lay three steps
  # over each row's completion tokens, with random labels.
  mask = np.asarray(update.seq.loss_mask_BxL) > 0
  col = np.cumsum(mask, axis=1) - 1
  step_id = np.where(mask, np.minimum(col // 8, 2), -1).astype(np.int32)
  valid = np.random.default_rng(1).integers(0, 2, size=(len(mask), 3))
  step_valid = np.where(
    mask, np.take_along_axis(valid, np.maximum(step_id, 0), 1), 0
  ).astype(np.int32)
  update = update.replace(
    adv_BxL=np.zeros_like(update.adv_BxL),
    value_labels=update.value_labels.replace(
      step_id_BxL=step_id, step_valid_BxL=step_valid
    ),
  )
  base = dataclasses.replace(
    steps.options_from_config(trainer.config), prompt_len=t, beta=0.0
  )
  assert not base.value_shapes_policy  # the default

  def grads(**changes):
    opts = dataclasses.replace(base, **changes)
    fn = jax.grad(lambda tr: steps.rl_loss(tr, update, trainer.graphs, opts)[0])
    return fn(state.trainables())

  def biggest(tree):
    return max(float(np.abs(x).max()) for x in jax.tree.leaves(tree))

  stopped = grads(value_loss_weight=0.1)
  shaping = grads(value_loss_weight=0.1, value_shapes_policy=True)
  doubled = grads(value_loss_weight=0.2, value_shapes_policy=True)
  assert biggest(stopped["policy"]) == 0.0
  scale = biggest(shaping["policy"])
  assert scale > 0
  for a, b in zip(
    jax.tree.leaves(shaping["policy"]), jax.tree.leaves(doubled["policy"])
  ):
    np.testing.assert_allclose(b, 2 * a, rtol=1e-4, atol=1e-6 * scale)
  for a, b in zip(
    jax.tree.leaves(stopped["value"]), jax.tree.leaves(shaping["value"])
  ):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-8)
