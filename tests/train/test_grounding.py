"""The grounding readout: SynthMed findings labels, its loss, and an SFT
step that trains the vision tower through it."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.data import synthmed
from stepjax.models import config as models_config
from stepjax.models import step_value
from stepjax.rl import losses
from stepjax.train import batches, loop, optim, policy, steps

from . import trainer_utils


def test_finding_labels_follow_the_scene():
  record = synthmed.make_record(0, 3)  # an abdomen: left kidney, 3 lesions
  labels, mask = synthmed.finding_labels(record.meta)
  scene = synthmed.scene_of(record)
  for k, name in enumerate(synthmed.FINDINGS):
    organ = scene.organ(name)
    assert mask[k] == (organ is not None)
    assert labels[k] == (organ is not None and len(organ.lesions) > 0)
  assert labels[synthmed.FINDINGS.index("left kidney")] == 1
  assert mask[synthmed.FINDINGS.index("heart")] == 0
  empty_labels, empty_mask = synthmed.finding_labels({"other": 1})
  assert not empty_mask.any() and not empty_labels.any()


def test_grounding_loss_is_masked_bce():
  logits = jnp.array([[2.0, -1.0, 30.0], [0.5, 0.0, -3.0]])
  labels = jnp.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
  loss, m = losses.grounding_loss(logits, labels, mask)
  # Masked pairs: (2, y=1), (-1, y=1), (0.5, y=0), (-3, y=1).
  want = np.mean(
    [np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0))]
    + [
      np.log1p(np.exp(0.5)),
      np.log1p(np.exp(3.0)),
    ]
  )
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)
  assert float(m["accuracy"]) == pytest.approx(1 / 4)


@pytest.fixture(scope="module")
def grounded(tmp_path_factory):
  """A trainer with the readout on (weight 0.5), its fresh state and one
  SFT batch."""
  config = trainer_utils.test_config(
    **{"sft.grounding_weight": 0.5, "mesh.data": 1}
  )
  trainer = loop.Trainer(config, str(tmp_path_factory.mktemp("grounded")))
  phase = trainer.phases[0]
  state = trainer.fresh_state(phase.tx)
  inputs = batches.sft_batch(next(iter(phase.dataset)), trainer.cfg)
  return trainer, state, inputs


def test_readout_takes_the_strongest_valid_token(grounded):
  trainer, state, _ = grounded
  assert trainer.cfg.grounding_outputs == len(synthmed.FINDINGS)
  value_params = state.value_params
  e = trainer.cfg.vision.out_hidden_size
  img = jax.random.normal(jax.random.key(0), (2, 4, e))
  valid = jnp.array([[True, True, True, False], [True, False, False, False]])
  got = step_value.grounding_logits(
    trainer.graphs.value, value_params, img, valid
  )
  head = value_params["grounding"]
  per_token = img @ head["kernel"][...] + head["bias"][...]
  for i in range(2):
    n = int(valid[i].sum())
    want = jax.nn.logsumexp(per_token[i, :n], axis=0)
    np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)
  # Changing an invalid token changes nothing.
  img2 = img.at[0, 3].set(100.0)
  again = step_value.grounding_logits(
    trainer.graphs.value, value_params, img2, valid
  )
  np.testing.assert_allclose(again, got, rtol=1e-6)


def test_readout_follows_the_job_config_on_any_data():
  """A grounded run's model keeps its readout when evaluated on other data
  (its checkpoints must restore); training it there is refused earlier, by
  the config checks (tests/test_config.py)."""
  config = trainer_utils.test_config(**{"sft.grounding_weight": 0.5})
  config.data.dataset = "vqa_rad"
  assert policy.grounding_outputs(config) == len(synthmed.FINDINGS)
  config.sft.grounding_weight = 0.0
  assert policy.grounding_outputs(config) == 0


def test_sft_step_adds_the_weighted_readout_loss(grounded):
  trainer, state, inputs = grounded
  opts = steps.options_from_config(trainer.config)
  assert opts.grounding_weight == 0.5

  @functools.partial(jax.jit, static_argnums=(2,))
  def grads(trainables, batch, opts):
    return jax.value_and_grad(steps.sft_loss, has_aux=True)(
      trainables, batch, trainer.graphs, opts
    )

  batch = jax.tree.map(jnp.asarray, inputs)
  assert inputs.findings_BxF.shape == (len(inputs.seq.ids_BxL), 7)
  assert inputs.findings_mask_BxF.sum() > 0
  (obj, metrics), on = grads(state.trainables(), batch, opts)
  np.testing.assert_allclose(
    float(obj),
    float(metrics["loss"]) + 0.5 * float(metrics["grounding_loss"]),
    rtol=1e-6,
  )
  readout = np.abs(np.asarray(on["value"]["grounding"]["kernel"][...]))
  assert readout.max() > 0
  off_opts = dataclasses.replace(opts, grounding_weight=0.0)
  (off_obj, off_metrics), off = grads(state.trainables(), batch, off_opts)
  assert "grounding_loss" not in off_metrics
  # Same cross-entropy either way; the readout adds gradient to the tower.
  np.testing.assert_allclose(float(off_obj), float(metrics["loss"]), rtol=1e-6)
  tower_on = trainer_utils.flat_params(on["policy"]["visual"])
  tower_off = trainer_utils.flat_params(off["policy"]["visual"])
  assert trainer_utils.max_abs_diff(tower_on, tower_off) > 0


@pytest.mark.parametrize(
  "flag, make_tx",
  [
    ("rl.freeze_vision", optim.rl_optimizer),
    ("sft.freeze_vision", optim.sft_optimizer),
  ],
)
def test_frozen_vision_tower_gets_no_update(flag, make_tx):
  config = trainer_utils.test_config(
    **{flag: True, "optim.weight_decay": 0.1, "sft.steps": 4}
  )
  tx = make_tx(config)
  params, value_params = policy.init(models_config.ModelConfig.tiny(), 0)
  trainables = {"policy": params, "value": value_params}
  grads = jax.tree.map(jnp.ones_like, trainables)
  updates, _ = jax.jit(tx.update)(grads, tx.init(trainables), trainables)
  vision = trainer_utils.flat_params(updates["policy"]["visual"])
  language = trainer_utils.flat_params(updates["policy"]["language"])
  assert max(np.abs(v).max() for v in vision.values()) == 0
  assert min(np.abs(v).max() for v in language.values()) > 0


def test_value_lr_scale_scales_the_value_heads_updates_only():
  params, value_params = policy.init(models_config.ModelConfig.tiny(), 0)
  trainables = {"policy": params, "value": value_params}
  grads = jax.tree.map(jnp.ones_like, trainables)
  updates = {}
  for scale in (1.0, 10.0):
    tx = optim.rl_optimizer(
      trainer_utils.test_config(**{"rl.value_lr_scale": scale})
    )
    updates[scale], _ = jax.jit(tx.update)(
      grads, tx.init(trainables), trainables
    )
  for name, u in trainer_utils.flat_params(updates[1.0]["value"]).items():
    got = trainer_utils.flat_params(updates[10.0]["value"])[name]
    assert np.abs(u).max() > 0
    np.testing.assert_allclose(got, 10.0 * u, rtol=1e-6, err_msg=name)
  np.testing.assert_array_equal(
    *(
      np.concatenate([v.ravel() for v in flat.values()])
      for flat in (
        trainer_utils.flat_params(updates[s]["policy"]) for s in (1.0, 10.0)
      )
    )
  )
