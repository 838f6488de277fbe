"""The trainer reads a step's metrics one step late: while the device runs
step s + 1, the host writes step s (device arrays are read then)."""

import jax.numpy as jnp
import pytest

from stepjax.train import loop
from stepjax.train import metrics as metrics_lib

from . import trainer_utils


def test_step_metrics_are_written_when_the_next_step_is_queued(tmp_path):
  config = trainer_utils.test_config(**{"mesh.data": 1})
  trainer = loop.Trainer(config, str(tmp_path))
  try:
    trainer.log_step(0, "sft", {"loss": jnp.asarray(1.5), "update_tokens": 8.0})
    assert metrics_lib.read_metrics(str(tmp_path)) == []
    trainer.log_step(1, "sft", {"loss": jnp.asarray(0.5), "update_tokens": 8.0})
    (first,) = metrics_lib.read_metrics(str(tmp_path))
    assert first["step"] == 0 and first["loss"] == pytest.approx(1.5)
    assert first["update_tokens_per_s"] > 0 and "update_tokens" not in first
    trainer.flush_metrics()
    steps = [r["step"] for r in metrics_lib.read_metrics(str(tmp_path))]
    assert steps == [0, 1]
    assert trainer.flush_metrics() is None  # nothing left to write
  finally:
    trainer.writer.close()
    trainer.checkpointer.close()
