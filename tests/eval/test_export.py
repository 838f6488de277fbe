"""`stepjax export`: the HF directory loads in transformers (same logits)
and as stepjax's init_from (same parameters)."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest
import torch
import transformers

from stepjax import image_slots
from stepjax.data import tokenizer as tokenizer_lib
from stepjax.eval import checkpoints, export
from stepjax.eval import generate as gen
from stepjax.models import vlm
from stepjax.sampling import sampler
from stepjax.train import loop

_spec = importlib.util.spec_from_file_location(
  "tiny_run",
  pathlib.Path(__file__).resolve().parents[1] / "eval" / "tiny_run.py",
)
tiny_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_run)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  run = tiny_run.run_dir(tmp_path_factory)
  return run, tiny_run.hf_dir(tmp_path_factory)


def _flat(params):
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {
    jax.tree_util.keystr(p): np.asarray(jax.device_get(x)) for p, x in leaves
  }


def test_files_and_tokenizer(exported):
  _, hf = exported
  for name in ("config.json", "model.safetensors", "tokenizer.json"):
    assert (pathlib.Path(hf) / name).exists(), name
  tok = tokenizer_lib.load_tokenizer(hf)
  ref = tokenizer_lib.load_tokenizer("")
  text = "<think>The liver has a lesion.</think><answer>liver</answer>"
  assert tok.encode(text) == ref.encode(text)
  assert transformers.AutoTokenizer.from_pretrained(hf).encode(text) == (
    ref.encode(text)
  )


def test_transformers_logits_equal_ours(exported):
  run, hf = exported
  loaded = checkpoints.load(tiny_run.config(), run)
  example = gen.prepare_example(
    _png(hf),
    "Which organ has a lesion?",
    loaded.config,
    loaded.tokenizer,
  )
  ids = example["prompt_ids"][None]
  (pixels_NxP,), (grid_thw,) = example["pixels"], example["grids"]
  grid = grid_thw[None]
  batch = {
    "prompt_ids_BxT": ids,
    "prompt_mask_BxT": np.ones_like(ids),
    "pixels_IxNxP": pixels_NxP[None],
    "grid_thw_Ix3": grid,
    "image_prompt_I": np.zeros(1, np.int32),
  }
  prompt = sampler.prepare_inputs(batch, loaded.cfg)
  ours, _, _ = vlm.forward(
    loaded.graphs.policy, loaded.params, prompt.prompt_ids_PxT,
    prompt.positions_3xPxT, prompt.prompt_mask_PxT,
    **image_slots.model_inputs(prompt.images),
  )  # fmt: skip
  model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
    hf, attn_implementation="eager"
  ).eval()
  with torch.no_grad():
    theirs = model(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.ones(ids.shape, dtype=torch.long),
      pixel_values=torch.tensor(pixels_NxP),
      image_grid_thw=torch.tensor(grid, dtype=torch.long),
      mm_token_type_ids=torch.tensor(
        (ids == loaded.cfg.image_pad_token_id).astype(np.int64)
      ),
    ).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)


def test_init_from_the_export_gives_the_same_params(exported, tmp_path):
  run, hf = exported
  config = tiny_run.config(init_from=hf)
  trainer = loop.Trainer(config, str(tmp_path))
  state, done, _, _ = trainer.initial_state()
  assert done == 0
  want = _flat(checkpoints.load(tiny_run.config(), run).params)
  got = _flat(state.params)
  assert want.keys() == got.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_export_refuses_to_overwrite_its_input(exported):
  run, _ = exported
  with pytest.raises(ValueError, match="--out=.* is --checkpoint itself"):
    export.export(tiny_run.config(), run, run)


def _png(directory):
  import PIL.Image

  path = pathlib.Path(directory).parent / "export_test.png"
  if not path.exists():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (84, 112, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
  return str(path)
