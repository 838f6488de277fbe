"""hf_convert: parameter counts vs transformers, sharded loading, bf16
through the safetensors library, errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwen_fixtures as fx
import safetensors
import safetensors.numpy
import safetensors.torch
import torch
import transformers
from flax import nnx

from stepjax import errors
from stepjax.models import config as config_lib
from stepjax.models import hf_convert, vlm


@pytest.mark.parametrize(
  "preset",
  ["qwen25vl_3b", "qwen25vl_7b", "bench", "qwen3vl_2b", "qwen3vl_4b",
   "qwen3vl_8b", "internvl3_1b", "internvl3_2b", "internvl3_8b"],
)  # fmt: skip
def test_param_count_equals_transformers(preset):
  cfg = getattr(config_lib.ModelConfig, preset)()
  ours = vlm.param_count(cfg)
  config_cls, model_cls = fx.hf_classes(cfg)
  with torch.device("meta"):
    hf = model_cls(config_cls(**cfg.to_hf_dict()))
  theirs = sum(p.numel() for p in hf.parameters())
  print(f"[count] {preset}: ours={ours} transformers={theirs}")
  assert ours == theirs
  if preset == "bench":
    assert 5.3e6 < ours < 5.5e6


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  cfg = config_lib.ModelConfig.tiny_alt()
  model = vlm.create(cfg, seed=1)
  directory = str(tmp_path_factory.mktemp("saved"))
  hf_convert.save_hf(model, cfg, directory)
  return cfg, model, directory


def _tensors(directory):
  path = os.path.join(directory, "model.safetensors")
  return safetensors.numpy.load_file(path)


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
  safetensors.numpy.save_file(
    tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"}
  )
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
    safetensors.numpy.save_file(
      {n: tensors[n] for n in part}, str(tmp_path / file)
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
  with pytest.raises(
    errors.InputError, match=r"lacks.*layers\.1\.mlp\.up\.kernel"
  ):
    hf_convert.load_hf(d)


def test_unexpected_tensor_is_named(saved, tmp_path):
  _, _, directory = saved
  tensors = _tensors(directory)
  tensors["model.visual.extra.weight"] = np.zeros((2,), np.float32)
  d = _rewrite(directory, str(tmp_path / "u"), tensors)
  with pytest.raises(
    errors.InputError, match=r"unexpected.*visual\.extra\.weight"
  ):
    hf_convert.load_hf(d)


def test_tied_config_with_another_head_is_refused(saved, tmp_path):
  """A checkpoint that says tied but stores a different lm_head is not
  loaded with the head dropped; a stored copy of the embedding is fine."""
  cfg, _, directory = saved
  tied = {"tie_word_embeddings": True}
  tensors = _tensors(directory)  # untied: its own, different lm_head
  d = _rewrite(directory, str(tmp_path / "t"), tensors, config=tied)
  with pytest.raises(errors.InputError, match=r"lm_head.weight differs"):
    hf_convert.load_hf(d)
  tensors["lm_head.weight"] = tensors[
    "model.language_model.embed_tokens.weight"
  ].copy()
  d = _rewrite(directory, str(tmp_path / "c"), tensors, config=tied)
  loaded_cfg, params = hf_convert.load_hf(d)
  assert loaded_cfg.tie_word_embeddings
  paths = [path for path, _ in nnx.to_flat_state(params)]
  assert not any(path[0] == "lm_head" for path in paths)


def test_misshaped_tensor_is_named(saved, tmp_path):
  _, _, directory = saved
  tensors = _tensors(directory)
  name = "model.language_model.layers.0.self_attn.k_proj.weight"
  tensors[name] = tensors[name][:-1]
  d = _rewrite(directory, str(tmp_path / "s"), tensors)
  with pytest.raises(
    errors.InputError, match=r"k_proj\.weight has shape.*attn\.k"
  ):
    hf_convert.load_hf(d)


def test_unsupported_configs(saved, tmp_path):
  _, _, directory = saved
  d = _rewrite(directory, str(tmp_path / "llama"), config={"model_type": "x"})
  with pytest.raises(ValueError, match="Unsupported model_type 'x'"):
    hf_convert.load_hf(d)
  with pytest.raises(errors.MissingInputError, match="config.json"):
    hf_convert.load_hf(str(tmp_path / "nowhere"))
  os.makedirs(tmp_path / "empty")
  with open(os.path.join(directory, "config.json")) as f:
    (tmp_path / "empty" / "config.json").write_text(f.read())
  with pytest.raises(errors.MissingInputError, match="model.safetensors"):
    hf_convert.load_hf(str(tmp_path / "empty"))


def _bf16(cfg):
  return cfg.replace(param_dtype="bfloat16", dtype="bfloat16")


def test_bf16_round_trip(tmp_path):
  cfg = _bf16(config_lib.ModelConfig.tiny_alt())
  model = vlm.create(cfg, seed=2)
  hf_convert.save_hf(model, cfg, str(tmp_path))
  with safetensors.safe_open(
    str(tmp_path / "model.safetensors"), framework="numpy"
  ) as f:
    assert f.metadata() == {"format": "pt"}
    assert {f.get_slice(n).get_dtype() for n in f.keys()} == {"BF16"}
  loaded_cfg, params = hf_convert.load_hf(str(tmp_path))
  assert loaded_cfg == cfg
  for _, v in nnx.to_flat_state(params):
    assert v.get_value().dtype == jnp.bfloat16
  _same_params(nnx.state(model, nnx.Param), params)


def test_sharded_bf16_transformers_round_trip(tmp_path):
  """transformers' sharded bf16 save -> load_hf -> save_hf -> torch and
  transformers read ours back with the same tensors, bit for bit."""
  cfg = config_lib.ModelConfig.tiny_alt()
  hf = fx.hf_model(cfg).to(torch.bfloat16)
  hf.save_pretrained(tmp_path / "hf", max_shard_size="200KB")
  index = json.loads((tmp_path / "hf/model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 1
  assert not (tmp_path / "hf/model.safetensors").exists()
  loaded_cfg, params = hf_convert.load_hf(str(tmp_path / "hf"))
  assert loaded_cfg == _bf16(cfg)
  hf_convert.save_hf(params, loaded_cfg, str(tmp_path / "ours"))
  theirs = hf.state_dict()
  ours = safetensors.torch.load_file(tmp_path / "ours/model.safetensors")
  assert ours.keys() == theirs.keys()
  for name, x in ours.items():
    assert x.dtype == torch.bfloat16, name
    torch.testing.assert_close(x, theirs[name], rtol=0, atol=0)
  reloaded, info = (
    transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
      tmp_path / "ours", dtype=torch.bfloat16, output_loading_info=True
    )
  )
  assert not any(info.values()), info
  for name, x in reloaded.state_dict().items():
    torch.testing.assert_close(x, theirs[name], rtol=0, atol=0)


_CORRUPT = {
  "truncated": lambda data: data[:-1000],
  "truncated_header": lambda data: data[:100],
  "not_safetensors": lambda data: b'{"weight_map": {}}',
  "empty": lambda data: b"",
}


@pytest.mark.parametrize("corruption", sorted(_CORRUPT))
def test_unreadable_file_is_a_one_line_user_error(saved, tmp_path, corruption):
  _, _, directory = saved
  d = _rewrite(directory, str(tmp_path / "c"))
  path = os.path.join(d, "model.safetensors")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(_CORRUPT[corruption](data))
  with pytest.raises(errors.UserError) as e:
    hf_convert.load_hf(d)
  message = str(e.value)
  print(f"[{corruption}] {message}")
  assert isinstance(e.value, hf_convert.CheckpointFileError)
  assert message.startswith(f"{path}: not a readable safetensors file")
  assert "download it again" in message
  assert "\n" not in message


def test_unreadable_index_is_a_one_line_user_error(saved, tmp_path):
  _, _, directory = saved
  d = _rewrite(directory, str(tmp_path / "i"))
  index = os.path.join(d, "model.safetensors.index.json")
  with open(index, "w") as f:
    f.write('{"weight_map": {"a": "model.safe')  # cut off mid-copy
  with pytest.raises(errors.UserError, match="safetensors index") as e:
    hf_convert.load_hf(d)
  assert str(e.value).startswith(f"{index}: ")
  assert "\n" not in str(e.value)


def test_unsupported_dtype_is_named(saved, tmp_path):
  _, _, directory = saved
  tensors = {n: torch.from_numpy(x) for n, x in _tensors(directory).items()}
  name = "model.language_model.norm.weight"
  tensors[name] = tensors[name].to(torch.float8_e4m3fn)
  d = _rewrite(directory, str(tmp_path / "f8"), tensors={})
  safetensors.torch.save_file(tensors, os.path.join(d, "model.safetensors"))
  with pytest.raises(errors.UserError, match=rf"{name} \(F8_E4M3\)"):
    hf_convert.load_hf(d)
