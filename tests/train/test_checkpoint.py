"""Checkpointer: relative run directories (as users type them) work."""

import jax.numpy as jnp
import numpy as np

from stepjax.train import checkpoint


def test_relative_workdir_saves_and_restores(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  ckpt = checkpoint.Checkpointer("runs/a/checkpoints", keep=2)
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.array(3)}
  ckpt.save(3, state, None, {"phase": "rl"})
  assert ckpt.latest_step() == 3
  assert (tmp_path / "runs" / "a" / "checkpoints" / "3").is_dir()
  target = {
    "w": jnp.zeros((2, 3)),
    "step": jnp.array(0),
  }
  restored, info, ref = ckpt.restore(3, target, None)
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert info["phase"] == "rl" and ref is None
  ckpt.close()


def test_absolute_keeps_urls():
  assert checkpoint.absolute("gs://bucket/run") == "gs://bucket/run"
  assert checkpoint.absolute("runs/x").startswith("/")


def test_a_checkpoint_saved_before_step_value_input_held_the_last_token_head():
  assert checkpoint.saved_model({}) == {}
  old = checkpoint.saved_model({"model": {"preset": "tiny"}})
  assert old == {"preset": "tiny", "step_value_input": "last"}
  keys = ("preset", "step_value_input")
  assert (
    checkpoint.model_changes(
      old, {"preset": "tiny", "step_value_input": "last"}, keys
    )
    == ""
  )
  changed = checkpoint.model_changes(
    old, {"preset": "tiny", "step_value_input": "last+step_mean"}, keys
  )
  assert changed == (
    "model.step_value_input: saved 'last', config 'last+step_mean'"
  )
  new = {"preset": "tiny", "step_value_input": "last+step_mean"}
  assert checkpoint.saved_model({"model": new}) == new
