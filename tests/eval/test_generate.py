"""`stepjax generate`: streamed decoding on DICOM / PNG / JPEG images with a
run checkpoint and its HF export, equal to the jitted sampler; batch mode."""

import importlib.util
import json
import pathlib
import types

import jax
import numpy as np
import PIL.Image
import pytest
from pydicom import data as pydicom_data

from stepjax.data import images, records
from stepjax.eval import checkpoints
from stepjax.eval import generate as gen
from stepjax.sampling import sampler

_spec = importlib.util.spec_from_file_location(
  "tiny_run", pathlib.Path(__file__).with_name("tiny_run.py")
)
tiny_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_run)

QUESTION = "Which organ has a lesion?"
# Fewer new tokens than training's 56: the same checks, a third of the time.
CONFIG = {"sampling.max_new_tokens": 16}


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
  PIL.Image.fromarray(pixels).save(d / "scan.png")
  PIL.Image.fromarray(pixels[:70, :60]).save(d / "scan.jpg", quality=90)
  return {
    "ct": pydicom_data.get_testdata_file("CT_small.dcm"),
    "mr": pydicom_data.get_testdata_file("MR_small.dcm"),
    "png": str(d / "scan.png"),
    "jpeg": str(d / "scan.jpg"),
  }


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
  run = tiny_run.run_dir(tmp_path_factory)
  hf = tiny_run.hf_dir(tmp_path_factory)
  return {
    "run": checkpoints.load(tiny_run.config(**CONFIG), run),
    "hf": checkpoints.load(tiny_run.config(**CONFIG), hf),
  }


@pytest.fixture(scope="module")
def results(policies, image_files):
  out = {}
  for kind, loaded in policies.items():
    for name, path in image_files.items():
      pieces = []
      result = gen.generate_one(loaded, path, QUESTION, on_text=pieces.append)
      result["streamed"] = "".join(pieces)
      out[kind, name] = result
  return out


def test_loads_both_checkpoint_kinds(policies):
  assert policies["run"].kind == "orbax" and policies["hf"].kind == "hf"
  assert policies["hf"].config.tokenizer.path  # the exported tokenizer
  assert policies["run"].cfg == policies["hf"].cfg


@pytest.mark.parametrize("image", ["ct", "mr", "png", "jpeg"])
def test_generates_on_every_image_kind(results, image):
  for kind in ("run", "hf"):
    r = results[kind, image]
    assert 0 < len(r["tokens"]) <= 16
    assert r["streamed"] == r["completion"]  # streaming loses no text
    assert isinstance(r["steps"], list) and isinstance(r["answer"], str)
  # The exported HF directory holds the same policy: same completion.
  assert results["run", image]["tokens"] == results["hf", image]["tokens"]


def test_stream_equals_the_jitted_sampler(policies, image_files, results):
  loaded = policies["run"]
  config = loaded.config
  example = gen.prepare_example(
    image_files["ct"], QUESTION, config, loaded.tokenizer
  )
  batch = gen.collate([example], config, loaded.tok_info.pad_id)
  assert results["run", "ct"]["tokens"] == _sampled_tokens(loaded, batch)


def _sampled_tokens(loaded, batch):
  """Prompt 0's greedy tokens from the jitted sampler (stop id included)."""
  config = loaded.config
  out = sampler.generate(
    loaded.graphs.policy,
    loaded.params,
    sampler.prepare_inputs(batch, loaded.cfg),
    jax.random.key(config.seed),
    max_new_tokens=config.sampling.max_new_tokens,
    temperature=0.0,
    eos_ids=(loaded.tok_info.eos_id,),
    pad_id=loaded.tok_info.pad_id,
  )
  n = int(out.lengths_B[0])
  return [int(t) for t in np.asarray(out.tokens_BxR)[0, :n]]


def test_dicom_window_flags(image_files):
  ct = image_files["ct"]
  assert gen.dicom_window(ct, None, None) is None
  center, width = gen.dicom_window(ct, 40.0, None)  # width from the file
  assert center == 40.0 and width > 0
  assert gen.dicom_window(ct, 40.0, 400.0) == (40.0, 400.0)
  ref = records.ImageRef(path=ct)
  narrow = images.decode_image(ref, window=(40.0, 10.0))
  default = images.decode_image(ref)
  assert not np.array_equal(narrow, default)
  with pytest.raises(ValueError, match="--window_width"):
    gen.dicom_window(image_files["png"], 40.0, None)


def test_batch_mode_writes_jsonl(policies, image_files, results, tmp_path):
  entries = []
  for name in ("ct", "png", "jpeg"):
    path = pathlib.Path(image_files[name])
    (tmp_path / path.name).write_bytes(path.read_bytes())
    entries.append({"image": path.name, "question": QUESTION})  # relative
  (tmp_path / "list.json").write_text(json.dumps(entries))
  out = tmp_path / "out.jsonl"
  n = gen.generate_file(policies["run"], str(tmp_path / "list.json"), str(out))
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert n == len(rows) == 3
  for row, name in zip(rows, ("ct", "png", "jpeg")):
    assert row["image"] == str(tmp_path / pathlib.Path(image_files[name]).name)
    assert set(row) >= {"completion", "steps", "answer", "num_tokens"}
    assert row["completion"] == results["run", name]["completion"]


def _main(checkpoint, image, capsys):
  """What `stepjax generate --checkpoint --image --question` prints."""
  flags = types.SimpleNamespace(
    checkpoint=checkpoint,
    image=image,
    question=QUESTION,
    window_center=None,
    window_width=None,
    input="",
    out="",
  )
  gen.main([], tiny_run.config(**CONFIG), flags)
  return capsys.readouterr().out


def test_main_prints_steps_and_answer(policies, image_files, capsys):
  printed = _main(policies["hf"].path, image_files["mr"], capsys)
  assert "Reasoning steps:" in printed and "Answer:" in printed


def test_format_result_numbers_the_steps():
  text = "<think>The organ is the liver. It has a lesion.</think>"
  text += "<answer>liver</answer>"
  result = gen.parse_completion(text, "think")
  assert result["steps"] == ["The organ is the liver.", "It has a lesion."]
  assert gen.format_result(result).splitlines() == [
    "Reasoning steps:",
    "  1. The organ is the liver.",
    "  2. It has a lesion.",
    "Answer: liver",
  ]


def test_bad_input_list_is_named(tmp_path):
  (tmp_path / "l.json").write_text('[{"image": "a.png"}]')
  with pytest.raises(ValueError, match="entry 0 must be an object"):
    gen.read_input_list(str(tmp_path / "l.json"))


def test_two_images_in_one_prompt(policies, image_files, tmp_path, capsys):
  """--image=a,b: one prompt showing both images, in order; streamed
  tokens equal the jitted sampler's on the same two-image batch."""
  loaded = policies["run"]
  config = loaded.config
  paths = [image_files["png"], image_files["ct"]]
  assert gen.image_paths(",".join(paths)) == paths
  result = gen.generate_one(loaded, paths, QUESTION)
  assert 0 < len(result["tokens"]) <= 16
  example = gen.prepare_example(paths, QUESTION, config, loaded.tokenizer)
  assert len(example["pixels"]) == len(example["grids"]) == 2
  batch = gen.collate([example], config, loaded.tok_info.pad_id)
  assert batch["image_prompt_I"].tolist() == [0, 0]
  ids = batch["prompt_ids_BxT"][0]
  assert np.sum(ids == loaded.tok_info.vision_start_id) == 2
  assert result["tokens"] == _sampled_tokens(loaded, batch)

  # Batch mode: entries with two images and with one share a batch.
  entries = [
    {"image": paths, "question": QUESTION},
    {"image": image_files["jpeg"], "question": QUESTION},
  ]
  (tmp_path / "list.json").write_text(json.dumps(entries))
  out_path = tmp_path / "out.jsonl"
  assert gen.generate_file(loaded, str(tmp_path / "list.json"), str(out_path))
  rows = [json.loads(line) for line in out_path.read_text().splitlines()]
  assert rows[0]["image"] == paths
  assert rows[0]["completion"] == result["completion"]
  assert rows[1]["image"] == image_files["jpeg"]

  # The command line: a comma-separated --image.
  assert "Answer:" in _main(loaded.path, ",".join(paths), capsys)
  with pytest.raises(ValueError, match="several images"):
    gen.dicom_window(paths, 40.0, None)
