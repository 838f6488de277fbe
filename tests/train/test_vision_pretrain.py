"""Vision pretraining: per-token SynthMed labels, where they fall in the
merged-token order, its loss, and a short run that trains only the tower."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from stepjax.data import images, synthmed
from stepjax.data import synthmed_render as render_lib
from stepjax.train import vision_pretrain

from . import trainer_utils

F = len(synthmed.FINDINGS)
C = len(synthmed.TOKEN_FINDINGS)


def _liver_scene(lesions):
  organ = {
    "name": "liver",
    "cx": 0.3,
    "cy": 0.4,
    "rx": 0.15,
    "ry": 0.13,
    "angle": 0.0,
    "lesions": lesions,
  }
  return {"scene": {"modality": "mri", "organs": [organ]}}


def test_token_findings_marks_the_cells_a_lesion_and_its_organ_cover():
  lesion = {"dx": 0.0, "dy": 0.0, "radius": 0.02, "bright": False}
  labels = synthmed.token_findings(_liver_scene([lesion]), 4, 4)
  liver = synthmed.FINDINGS.index("liver")
  assert labels.shape == (16, C) and C == 2 * F
  # Lesion at x 0.28-0.32, y 0.38-0.42: column 1, row 1 -> token 5 only.
  assert np.flatnonzero(labels[:, liver]).tolist() == [5]
  # Liver at x 0.15-0.45 (columns 0-1), y 0.27-0.53 (rows 1-2).
  assert np.flatnonzero(labels[:, F + liver]).tolist() == [4, 5, 8, 9]
  others = np.delete(labels, [liver, F + liver], axis=1)
  assert not others.any()
  assert not synthmed.token_findings(_liver_scene([]), 4, 4)[:, liver].any()


def test_lesion_tokens_are_where_the_rendered_lesions_are():
  # The rendered difference a scan's lesions make, cut into merged tokens
  # by the pipeline's own patch order, lands on the labelled tokens.
  spec = images.QWEN2_5_VL
  checked = 0
  for index in range(12):
    record = synthmed.make_record(0, index)
    scene = synthmed.scene_of(record)
    if not any(o.lesions for o in scene.organs):
      continue
    clean = dataclasses.replace(
      scene,
      organs=tuple(dataclasses.replace(o, lesions=()) for o in scene.organs),
    )
    diff = np.abs(
      render_lib.render(scene).astype(np.float32)
      - render_lib.render(clean).astype(np.float32)
    )
    rows = images.patchify(np.repeat(diff[..., None], 3, -1), spec=spec)
    per_token = rows.reshape(16, -1).max(axis=1)  # 4 patch rows per token
    labels = synthmed.token_findings(record.meta, 4, 4)
    marked = labels[:, :F].max(axis=1) > 0
    assert (per_token[marked] > 0).all(), (index, per_token, marked)
    assert marked[per_token >= 30].all(), (index, per_token, marked)
    checked += 1
  assert checked >= 5


def test_loss_and_metrics_by_hand():
  # One image, 2 tokens (the second invalid), C outputs.
  labels = np.zeros((1, 2, C), np.float32)
  labels[0, 0, 0] = 1.0  # organ 0 has a lesion in token 0
  labels[0, 0, F] = 1.0  # and is shown there
  labels[0, 0, F + 1] = 1.0  # organ 1 shown, no lesion
  logits = np.full((1, 2, C), -3.0, np.float32)
  logits[0, 0, 0] = 2.0
  logits[0, 1, 1] = 5.0  # invalid token: ignored
  valid = np.array([[1, 0]])
  loss, m = vision_pretrain.loss_and_metrics(
    jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(valid)
  )
  y, x = labels[0, 0], logits[0, 0]
  bce = np.log1p(np.exp(x)) - x * y
  np.testing.assert_allclose(float(loss), bce.mean(), rtol=1e-6)
  # Token 0's predictions: all right but organ 0 and 1 shown (logit -3).
  np.testing.assert_allclose(float(m["token_accuracy"]), (C - 2) / C, rtol=1e-6)
  # Scans: organ 0 (lesion, logit 2: right), organ 1 (none, -3: right);
  # the other organs are not in the scan.
  np.testing.assert_array_equal(m["scan_count_F"], [1, 1] + [0] * (F - 2))
  np.testing.assert_array_equal(m["scan_hits_F"], [1, 1] + [0] * (F - 2))


def test_pretraining_trains_the_tower_only_and_lowers_its_loss(tmp_path):
  from stepjax.train import loop

  config = trainer_utils.test_config(
    **{
      "sft.vision_pretrain_steps": 30,
      "sft.vision_pretrain_scans": 64,
      "sft.vision_pretrain_eval_scans": 16,
      "sft.vision_pretrain_lr": 3e-3,
      "mesh.data": 1,
    }
  )
  trainer = loop.Trainer(config, str(tmp_path))
  state = trainer.fresh_state(trainer.phases[0].tx)
  before = trainer_utils.flat_params(state.params)
  lines = []
  params, summary = vision_pretrain.pretrain(
    config,
    trainer.cfg,
    trainer.graphs.policy,
    state.params,
    trainer.tokenizer,
    trainer.place,
    log=lines.append,
  )
  after = trainer_utils.flat_params(params)
  assert after.keys() == before.keys()
  changed = {k for k in after if np.abs(after[k] - before[k]).max() > 0}
  assert changed and all(".visual" in k or "'visual'" in k for k in changed)
  assert any("language" in k for k in after.keys() - changed)
  curve = summary["curve"]
  assert summary["steps"] == 30 and len(curve) >= 1
  assert lines and "held-out" in lines[-1]
  held_out = summary["held_out"]
  assert 0.0 <= held_out["scan_accuracy"] <= 1.0
  assert list(held_out["scan_accuracy_by_organ"]) == list(synthmed.FINDINGS)
  # The per-token loss falls from its start (log 2 at a zero head) .
  assert curve[-1]["loss"] < 0.5


def test_the_trainer_pretrains_a_fresh_policy_and_writes_a_summary(tmp_path):
  from stepjax.train import loop

  config = trainer_utils.test_config(
    **{
      "sft.vision_pretrain_steps": 2,
      "sft.vision_pretrain_scans": 16,
      "sft.vision_pretrain_eval_scans": 8,
      "sft.batch_size": 8,  # split over the 8 simulated devices
      "train.steps": 0,
    }
  )
  trainer = loop.Trainer(config, str(tmp_path))
  fresh = trainer_utils.flat_params(
    trainer.fresh_state(trainer.phases[0].tx).params
  )
  state, done, _, _ = trainer.initial_state()
  assert done == 0
  params = trainer_utils.flat_params(state.params)
  tower = [k for k in params if "visual" in k]
  assert (
    trainer_utils.max_abs_diff(
      {k: params[k] for k in tower}, {k: fresh[k] for k in tower}
    )
    > 0
  )
  assert (tmp_path / "vision_pretrain.json").exists()
