"""hf_convert: parameter counts vs transformers, sharded loading, errors."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from stepjax.models import config as config_lib
from stepjax.models import hf_convert, qwen25vl


@pytest.mark.parametrize("preset", ["qwen25vl_3b", "qwen25vl_7b", "bench"])
def test_param_count_equals_transformers(preset):
  cfg = getattr(config_lib.ModelConfig, preset)()
  ours = qwen25vl.param_count(cfg)
  with torch.device("meta"):
    hf = transformers.Qwen2_5_VLForConditionalGeneration(
      transformers.Qwen2_5_VLConfig(**cfg.to_hf_dict())
    )
  theirs = sum(p.numel() for p in hf.parameters())
  print(f"[count] {preset}: ours={ours} transformers={theirs}")
  assert ours == theirs
  if preset == "bench":
    assert 5.3e6 < ours < 5.5e6


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  cfg = config_lib.ModelConfig.tiny_alt()
  model = qwen25vl.create(cfg, seed=1)
  directory = str(tmp_path_factory.mktemp("saved"))
  hf_convert.save_hf(model, cfg, directory)
  return cfg, model, directory


def _tensors(directory):
  path = os.path.join(directory, "model.safetensors")
  header, base = hf_convert._read_header(path)
  return {
    n: np.array(hf_convert._read_tensor(path, i, base, n))
    for n, i in header.items()
  }


def _rewrite(src, dst, tensors=None, config=None):
  os.makedirs(dst, exist_ok=True)
  with open(os.path.join(src, "config.json")) as f:
    cfg = json.load(f)
  if config:
    cfg.update(config)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(cfg, f)
  if tensors is None:
    tensors = _tensors(src)
  hf_convert._write_safetensors(os.path.join(dst, "model.safetensors"), tensors)
  return dst


def _same_params(a, b):
  for (pa, va), (pb, vb) in zip(nnx.to_flat_state(a), nnx.to_flat_state(b)):
    assert pa == pb
    np.testing.assert_array_equal(
      np.asarray(va.get_value()), np.asarray(vb.get_value())
    )


def test_sharded_index_and_device_put(saved, tmp_path):
  cfg, model, directory = saved
  tensors = _tensors(directory)
  names = sorted(tensors)
  halves = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
  weight_map = {}
  for file, part in halves.items():
    hf_convert._write_safetensors(
      str(tmp_path / file), {n: tensors[n] for n in part}
    )
    weight_map.update({n: file for n in part})
  (tmp_path / "model.safetensors.index.json").write_text(
    json.dumps({"weight_map": weight_map})
  )
  (tmp_path / "config.json").write_text(
    (open(os.path.join(directory, "config.json"))).read()
  )
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(8), ("fsdp",))

  def shard(path, shape):
    spec = ("fsdp",) if shape[0] % 8 == 0 else (None,)
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))

  loaded_cfg, params = hf_convert.load_hf(str(tmp_path), shardings=shard)
  assert loaded_cfg == cfg
  _same_params(nnx.state(model, nnx.Param), params)
  embed = params["language"]["embed"].get_value()
  assert embed.sharding.spec == jax.sharding.PartitionSpec("fsdp")
  assert len(embed.addressable_shards) == 8


def test_legacy_hub_names_load(saved, tmp_path):
  cfg, model, directory = saved
  legacy = {}
  for name, x in _tensors(directory).items():
    name = name.replace("model.visual.", "visual.")
    name = name.replace("model.language_model.", "model.")
    legacy[name] = x
  _rewrite(directory, str(tmp_path / "legacy"), legacy)
  _, params = hf_convert.load_hf(str(tmp_path / "legacy"))
  _same_params(nnx.state(model, nnx.Param), params)


def test_missing_tensor_is_named(saved, tmp_path):
  _, _, directory = saved
  tensors = _tensors(directory)
  del tensors["model.language_model.layers.1.mlp.up_proj.weight"]
  d = _rewrite(directory, str(tmp_path / "m"), tensors)
  with pytest.raises(ValueError, match=r"lacks.*layers\.1\.mlp\.up\.kernel"):
    hf_convert.load_hf(d)


def test_unexpected_tensor_is_named(saved, tmp_path):
  _, _, directory = saved
  tensors = _tensors(directory)
  tensors["model.visual.extra.weight"] = np.zeros((2,), np.float32)
  d = _rewrite(directory, str(tmp_path / "u"), tensors)
  with pytest.raises(ValueError, match=r"unexpected.*visual\.extra\.weight"):
    hf_convert.load_hf(d)


def test_misshaped_tensor_is_named(saved, tmp_path):
  _, _, directory = saved
  tensors = _tensors(directory)
  name = "model.language_model.layers.0.self_attn.k_proj.weight"
  tensors[name] = tensors[name][:-1]
  d = _rewrite(directory, str(tmp_path / "s"), tensors)
  with pytest.raises(ValueError, match=r"k_proj\.weight has shape.*attn\.k"):
    hf_convert.load_hf(d)


def test_unsupported_configs(saved, tmp_path):
  _, _, directory = saved
  d = _rewrite(directory, str(tmp_path / "llama"), config={"model_type": "x"})
  with pytest.raises(ValueError, match="Unsupported model_type 'x'"):
    hf_convert.load_hf(d)
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf_convert.load_hf(str(tmp_path / "nowhere"))
  os.makedirs(tmp_path / "empty")
  with open(os.path.join(directory, "config.json")) as f:
    (tmp_path / "empty" / "config.json").write_text(f.read())
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf_convert.load_hf(str(tmp_path / "empty"))
