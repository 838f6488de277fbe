"""`stepjax train` on the test config with the tiny InternVL preset: SFT,
RL and both evaluations run end to end (56-pixel tiles, 1D positions);
`stepjax export` of the run loads in transformers' InternVL with our
logits on a real preprocessed image (two tiles and the thumbnail)."""

import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
import transformers
import xla_env

from stepjax import image_slots
from stepjax.data import images
from stepjax.eval import checkpoints, export
from stepjax.eval import generate as gen
from stepjax.models import vision_internvl, vlm
from stepjax.sampling import sampler
from stepjax.train import metrics

from . import trainer_utils

CONFIG = str(trainer_utils.REPO / "configs" / "synthmed_tiny.py") + ":test"
PRESET = "tiny_internvl"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("internvl_run")
  env = xla_env.env(1)
  result = subprocess.run(
    [sys.executable, "-m", "stepjax", "train", f"--config={CONFIG}",
     f"--config.model.preset={PRESET}", f"--workdir={workdir}"],
    env=env, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  return workdir, result


def test_train_runs_with_tiny_internvl(run):
  workdir, result = run
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "[rl]" in result.stdout and "eval final" in result.stdout
  steps = [r["step"] for r in metrics.read_metrics(str(workdir))]
  assert steps == list(range(len(steps))) and len(steps) >= 4


def test_export_loads_in_transformers_with_our_logits(run, tmp_path):
  workdir, result = run
  assert result.returncode == 0
  config = trainer_utils.test_config(**{"model.preset": PRESET, "mesh.data": 1})
  out = export.export(config, str(workdir), str(tmp_path / "hf"))
  loaded = checkpoints.load(config, str(workdir))
  pixels = np.random.default_rng(0).integers(0, 255, (60, 130, 3), np.uint8)
  PIL.Image.fromarray(pixels).save(tmp_path / "wide.png")
  example = gen.prepare_example(
    str(tmp_path / "wide.png"), "Which organ?", loaded.config,
    loaded.tokenizer, spec=images.image_spec(loaded.cfg),
  )  # fmt: skip
  (pixels_NxP,), (grid_thw,) = example["pixels"], example["grids"]
  assert grid_thw.tolist() == [3, 4, 4]  # 2 tiles + thumbnail
  ids = example["prompt_ids"][None]
  prompt = sampler.prepare_inputs(
    {
      "prompt_ids_BxT": ids,
      "prompt_mask_BxT": np.ones_like(ids),
      "pixels_IxNxP": pixels_NxP[None],
      "grid_thw_Ix3": grid_thw[None],
      "image_prompt_I": np.zeros(1, np.int32),
    },
    loaded.cfg,
  )
  ours, _, _ = vlm.forward(
    loaded.graphs.policy, loaded.params, prompt.prompt_ids_PxT,
    prompt.positions_3xPxT, prompt.prompt_mask_PxT,
    **image_slots.model_inputs(prompt.images),
  )  # fmt: skip
  model = transformers.InternVLForConditionalGeneration.from_pretrained(
    out, attn_implementation="eager"
  ).eval()
  tiles = vision_internvl.tiles_from_rows(pixels_NxP, loaded.cfg.vision)
  with torch.no_grad():
    theirs = model(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.ones(ids.shape, dtype=torch.long),
      pixel_values=torch.tensor(tiles),
    ).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)
