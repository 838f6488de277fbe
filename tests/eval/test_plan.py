"""`stepjax plan`: exact per-device state bytes vs the trainer's arrays."""

import importlib.util
import pathlib

import jax
import pytest

from stepjax import chips, errors
from stepjax.eval import plan as plan_lib
from stepjax.train import loop

REPO = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
  "tiny_run", pathlib.Path(__file__).with_name("tiny_run.py")
)
tiny_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_run)


def _device0_bytes(tree) -> int:
  device = jax.devices()[0]
  return sum(
    shard.data.nbytes
    for x in jax.tree.leaves(tree)
    for shard in x.addressable_shards
    if shard.device == device
  )


@pytest.mark.parametrize("preset", ["bench"])
def test_plan_matches_the_trainers_arrays(preset, tmp_path):
  assert jax.device_count() == 8
  config = tiny_run.config(
    **{
      "model.preset": preset,
      "mesh.data": 2,
      "mesh.fsdp": 2,
      "mesh.tensor": 2,
      "optim.grad_accum": 2,  # MultiSteps state is planned too
      "data.batch_size": 4,
    }
  )
  p = plan_lib.plan(config, chip="v5e")
  trainer = loop.Trainer(config, str(tmp_path))
  state = trainer.fresh_state(trainer.phases[-1].tx)
  assert p.row("params").device_bytes == _device0_bytes(state.params)
  assert p.row("optimizer state").device_bytes == _device0_bytes(
    state.opt_state
  )
  assert p.row("step-value head").device_bytes == _device0_bytes(
    state.value_params
  )
  # Something is really sharded: a device holds less than the whole.
  assert p.row("params").device_bytes < p.row("params").total_bytes
  assert p.num_devices == 8 and p.row("reference policy")
  assert "fits" in p.verdict


def test_7b_plan_for_v5e16():
  module = _load_config("qwen25vl_7b_mrpo.py")
  config = module.get_config("mesh=v5e16,process=value_head")
  p = plan_lib.plan(config, chip=plan_lib.chip_from_config_arg("mesh=v5e16"))
  assert p.num_devices == 16 and p.chip == "v5e" and p.hbm_gib == 16.0
  assert 8.2e9 < p.param_count < 8.4e9
  params = p.row("params")
  assert params.total_bytes == 4 * p.param_count  # float32 params
  # AdamW: two moments the size of the params, plus MultiSteps' grads.
  moments = p.row("  adam moments (mu, nu)")
  assert moments.total_bytes >= 2 * params.total_bytes
  text = plan_lib.format_plan(p)
  assert "per-device GiB" in text and "HBM (v5e)" in text
  # 96% of HBM at its own batch: no batch size fits under 90%, and the
  # plan says what to change.
  assert p.largest_batch == 0
  assert "no data.batch_size fits" in text and "optim.grad_accum" in text


@pytest.mark.parametrize("mesh", ["v5e16", "v5p8"])
def test_qwen3vl_8b_plans(mesh):
  module = _load_config("qwen3vl_8b_mrpo.py")
  config = module.get_config(f"mesh={mesh}")
  assert config.model.preset == "qwen3vl_8b"
  assert config.tokenizer.think_tag == "thinking"
  p = plan_lib.plan(config, chip=plan_lib.chip_from_config_arg(f"mesh={mesh}"))
  # The published 8.77B plus the step-value head.
  assert 8.76e9 < p.param_count < 8.78e9
  text = plan_lib.format_plan(p)
  assert "full attention in every block" in text
  if mesh == "v5p8":
    assert "fits" in p.verdict and p.largest_batch >= 8
  else:  # 16 GB chips: as with the 7B, no batch fits under 90% of HBM.
    assert p.largest_batch == 0 and "no data.batch_size fits" in text


def test_internvl3_8b_plans_tile_attention():
  config = _load_config("internvl3_8b_mrpo.py").get_config("mesh=v5p8")
  assert config.model.preset == "internvl3_8b"
  p = plan_lib.plan(config, chip=plan_lib.chip_from_config_arg("mesh=v5p8"))
  # transformers' 7,944,373,760 plus the step-value head.
  assert 7.944e9 < p.param_count < 7.95e9
  text = plan_lib.format_plan(p)
  assert "attention inside each 448-pixel tile" in text
  assert "5120 patches" in text
  print(f"[plan] internvl3_8b v5p8: {p.verdict}")


def test_chip_from_config_arg_and_bad_chip():
  assert plan_lib.chip_from_config_arg("x.py:mesh=v5p8,algo=grpo") == "v5p"
  assert plan_lib.chip_from_config_arg("x.py") == ""
  with pytest.raises(ValueError, match="--chip='h100'"):
    plan_lib.plan(tiny_run.config(), chip="h100")


def _load_config(name):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_sampling_rows_split_over_the_batch_shards():
  config = tiny_run.config(
    **{
      "model.preset": "bench",
      "mesh.data": 2,
      "mesh.fsdp": 2,
      "mesh.tensor": 2,
      "data.batch_size": 6,  # 4 shards: padded to 8, 2 prompts per device
    }
  )
  p = plan_lib.plan(config, chip="v5e")
  kv = p.row("KV cache (sampling)")
  t = plan_lib.model_config(config).text
  g = config.sampling.group_size
  per_row = kv.total_bytes / (6 * g)
  heads = 2 if t.num_kv_heads % 2 == 0 else 1
  assert kv.device_bytes == 2 * g * per_row / heads
  assert f"{2 * g} rows per device" in kv.note


def test_largest_batch_is_the_edge_of_fitting():
  """The named batch size fits under 90% of HBM; the next multiple of the
  batch shards does not (whole plans recomputed at both sizes)."""
  config = tiny_run.config(
    **{
      "model.preset": "bench",
      "mesh.data": 2,
      "mesh.fsdp": 2,
      "mesh.tensor": 2,
    }
  )
  p = plan_lib.plan(config, chip="v5e")
  shards = p.mesh_shape["data"] * p.mesh_shape["fsdp"]
  largest = p.largest_batch
  assert largest and largest % shards == 0
  text = plan_lib.format_plan(p)
  assert "largest data.batch_size that fits under 90% of HBM" in text
  assert f": {largest} prompts" in text

  def used(batch):
    with config.unlocked():
      config.data.batch_size = batch
    q = plan_lib.plan(config, chip="v5e")
    return q.peak_device_bytes / (q.hbm_gib * plan_lib.GiB)

  assert used(largest) < plan_lib.FITS <= used(largest + shards)


def test_plan_refuses_an_unknown_chip_before_reading_the_config():
  # (The command line's refusal: tests/test_cli_errors.py, plan_bad_chip.)
  assert chips.chip_problem("") is None and chips.chip_problem("v5p") is None
  with pytest.raises(errors.InputError, match="'tpu9': expected one of"):
    plan_lib.plan(None, chip="tpu9")  # refused before the config is read
