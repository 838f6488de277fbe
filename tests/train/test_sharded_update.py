"""One RL update on a (2 data x 2 fsdp x 2 tensor) mesh equals 1 device,
and two processes with 2 devices each equal one process (gloo)."""

import pickle

import jax
import numpy as np
import pytest

from stepjax.train import loop

from . import trainer_utils

TOL = 1e-5
# The RL trainers' learning rate here (no warm-up): Adam's first step moves
# each parameter with a gradient by this much.
LR = 1e-3


def _rl_trainer(workdir, mesh, preset="tiny"):
  config = trainer_utils.test_config(
    **{
      "model.preset": preset,
      "sft.steps": 0,
      "train.steps": 1,
      "rl.beta": 0.04,
      "mesh.data": mesh[0],
      "mesh.fsdp": mesh[1],
      "mesh.tensor": mesh[2],
      "sampling.max_new_tokens": 24,
      # No warm-up: the first update moves parameters by ~lr (Adam), large
      # next to the tolerance.
      "optim.learning_rate": LR,
      "optim.warmup_steps": 0,
    }
  )
  return loop.Trainer(config, str(workdir))


def _update_and_result(trainer, update, prompt_len=0):
  phase = trainer.phases[-1]
  state = trainer.fresh_state(phase.tx)
  before = trainer_utils.flat_params(state.params)
  state, metrics = trainer.apply_update(state, phase, update, prompt_len)
  return before, trainer_utils.flat_params(state.params), metrics


def _first_adam_step_diff(before, after_a, after_b, lr=LR):
  """The largest difference between two first Adam steps over the entries
  where that step is well conditioned, and how many entries were left out.

  Adam's first step moves each parameter by lr * g / (|g| + eps): by
  exactly lr unless |g| is within a few eps of 0, where float32 noise of
  a reduction done in another order changes the move itself (measured:
  1e-5 to 2e-5 on a few such entries, on AMD EPYC and on AVX-512 Intel
  hosts). Those entries are left out and counted; entries with no
  gradient must stay put on both, and the left-out ones must still move
  the same way within a few % of lr."""
  worst, left_out = 0.0, 0
  for name, value in after_a.items():
    move = np.abs(value - before[name])
    steady = (move >= 0.999 * lr) | (move == 0)  # no gradient: no move
    diff = np.abs(value - after_b[name])
    worst = max(worst, float(diff[steady].max(initial=0)))
    left_out += int((~steady).sum())
    assert float(diff.max(initial=0)) <= 0.05 * lr, name
  return worst, left_out


def _reference(workdir, preset):
  """A real rollout on 1 device and the update computed from it."""
  trainer = _rl_trainer(workdir, (1, 1, 1), preset)
  phase = trainer.phases[-1]
  state = trainer.fresh_state(phase.tx)
  trainer.ref_params = jax.tree.map(lambda x: x + 0.0, state.params)
  batch = next(iter(phase.dataset))
  update, _ = trainer.rollout(state, batch, step=0)
  # An untrained policy often earns equal rewards within a group (all
  # advantages 0); give the completion tokens random advantages and some
  # step labels so the update moves every part of the loss.
  rng = np.random.default_rng(0)
  mask = np.asarray(update.seq.loss_mask_BxL)
  labels = update.value_labels
  update = update.replace(
    adv_BxL=(rng.normal(size=mask.shape) * mask).astype(np.float32),
    value_labels=labels.replace(label_mask_B=np.ones_like(labels.label_mask_B)),
  )
  before, after, metrics = _update_and_result(trainer, update)
  return update, before, after, metrics


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  return _reference(tmp_path_factory.mktemp("one"), "tiny")


def test_update_is_not_trivial(reference):
  update, before, after, metrics = reference
  assert np.abs(update.adv_BxL).max() > 0
  assert trainer_utils.max_abs_diff(before, after) > 5e-4
  assert np.isfinite(metrics["loss"])


def test_rollout_aligns_sampler_and_teacher_forced_logp(reference):
  """Trainer.rollout puts the sampler's log-prob of completion token c at
  the column where the teacher-forced reference log-prob of that token
  sits (the reference policy is the sampling one here)."""
  update = jax.device_get(reference[0])
  mask = update.seq.loss_mask_BxL > 0
  assert mask.sum() > 0 and not mask[:, 0].any()
  old, ref = update.old_logp_BxL, update.ref_logp_BxL
  np.testing.assert_allclose(old[mask], ref[mask], atol=2e-4)
  assert np.all(old[~mask] == 0)
  # Step ids live on completion tokens only.
  assert np.all(update.value_labels.step_id_BxL[~mask] == -1)


@pytest.mark.slow  # whole rows; the trainer's default is the next test
def test_eight_device_mesh_equals_one_device(reference, tmp_path):
  update, before, after_1, metrics_1 = reference
  trainer = _rl_trainer(tmp_path, (2, 2, 2))
  assert trainer.mesh.devices.size == 8
  _, after_8, metrics_8 = _update_and_result(trainer, update)
  loss_diff = abs(float(metrics_8["loss"]) - float(metrics_1["loss"]))
  param_diff, left_out = _first_adam_step_diff(before, after_1, after_8)
  print(
    f"8 devices vs 1: loss diff {loss_diff:.2e}, params {param_diff:.2e}"
    f" ({left_out} entries with |g| near 0 left out)"
  )
  assert loss_diff <= TOL
  assert param_diff <= TOL


def test_shared_prompts_on_eight_devices_equal_one_device(reference, tmp_path):
  """The trainer's default update (each group's prompt run once) on the
  (2, 2, 2) mesh equals one device, and its loss the whole-row one's."""
  update, _, _, metrics_whole = reference
  # The first completion column: every completion has a first token.
  t = int(np.argmax((np.asarray(update.seq.loss_mask_BxL) > 0).any(0)))
  assert t > 0
  one = _rl_trainer(tmp_path / "one", (1, 1, 1))
  before, after_1, metrics_1 = _update_and_result(one, update, t)
  eight = _rl_trainer(tmp_path / "eight", (2, 2, 2))
  _, after_8, metrics_8 = _update_and_result(eight, update, t)
  loss_diff = abs(float(metrics_8["loss"]) - float(metrics_1["loss"]))
  param_diff, left_out = _first_adam_step_diff(before, after_1, after_8)
  print(
    f"shared, 8 devices vs 1: loss {loss_diff:.2e}, params {param_diff:.2e}"
    f" ({left_out} entries with |g| near 0 left out)"
  )
  assert loss_diff <= TOL and param_diff <= TOL
  assert abs(float(metrics_1["loss"]) - float(metrics_whole["loss"])) <= TOL


@pytest.mark.slow  # about a minute; run with -m slow
def test_qwen3_eight_device_mesh_equals_one_device(tmp_path):
  """Qwen3-VL's tower and decoder sharded over (2, 2, 2): the same loss,
  and the same first Adam step wherever that step is well conditioned."""
  update, before, after_1, metrics_1 = _reference(
    tmp_path / "one", "tiny_qwen3"
  )
  trainer = _rl_trainer(tmp_path / "eight", (2, 2, 2), "tiny_qwen3")
  assert trainer.mesh.devices.size == 8
  _, after_8, metrics_8 = _update_and_result(trainer, update)
  worst, left_out = _first_adam_step_diff(before, after_1, after_8)
  total = sum(value.size for value in after_1.values())
  loss_diff = abs(float(metrics_8["loss"]) - float(metrics_1["loss"]))
  print(
    f"qwen3 8 devices vs 1: loss diff {loss_diff:.2e}, params {worst:.2e}"
    f" ({left_out} of {total} entries with |g| near 0 left out)"
  )
  assert loss_diff <= TOL
  assert worst <= TOL


def test_two_processes_equal_one_process(reference, tmp_path, two_processes):
  update, _, _, _ = reference
  # The one-process reference on the same (1 x 2 x 2) mesh of 4 devices.
  trainer = _rl_trainer(tmp_path / "single", (1, 2, 2))
  before, after_single, metrics_single = _update_and_result(trainer, update)
  update_path = tmp_path / "update.pkl"
  update_path.write_bytes(pickle.dumps(update))
  script = trainer_utils.REPO / "tests" / "train" / "multiprocess_update.py"
  two_processes(script, update_path, tmp_path)
  result = pickle.loads((tmp_path / "result.pkl").read_bytes())
  loss_diff = abs(result["loss"] - float(metrics_single["loss"]))
  param_diff, left_out = _first_adam_step_diff(
    before, after_single, result["params"]
  )
  print(
    f"2 processes vs 1: loss diff {loss_diff:.2e}, params {param_diff:.2e}"
    f" ({left_out} entries with |g| near 0 left out)"
  )
  assert loss_diff <= TOL
  assert param_diff <= TOL
