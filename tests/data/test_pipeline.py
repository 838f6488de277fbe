"""Grain pipeline: batch layout, buckets, sharding, checkpoints, bad input."""

import json
import logging

import grain
import numpy as np
import PIL.Image
import pytest
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from stepjax.data import errors, images, pipeline, records, sources

SPECIALS = [
  "<|endoftext|>",
  "<|im_start|>",
  "<|im_end|>",
  "<|vision_start|>",
  "<|vision_end|>",
  "<|image_pad|>",
  "<think>",
  "</think>",
  "<answer>",
  "</answer>",
]


@pytest.fixture(scope="module")
def tokenizer():
  """A byte-level BPE tokenizer with the Qwen2.5-VL special tokens."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=400,
    special_tokens=SPECIALS,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  corpus = ["Which organ is shown? The liver is enlarged. Answer: liver."] * 8
  tok.train_from_iterator(corpus, trainer)
  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>"
  )


def build_prompt(question, num_image_tokens, think_tag="think"):
  """Qwen2.5-VL chat layout (stand-in for stepjax.data.tokenizer)."""
  return (
    "<|im_start|>user\n<|vision_start|>"
    + "<|image_pad|>" * num_image_tokens
    + f"<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
  )


def format_completion(steps, answer, think_tag="think"):
  return (
    f"<{think_tag}>{' '.join(steps)}</{think_tag}><answer>{answer}</answer>"
  )


def _image(size, seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def _records(n, size=(112, 112), start=0):
  return [
    records.Record(
      id=f"r{i}",
      question=f"Which organ? {'x' * (i % 3)}",
      answer="liver",
      image=records.ImageRef(array=_image(size, i)),
      rationale="The liver is enlarged. So the answer is liver.",
      meta={"i": i},
    )
    for i in range(start, start + n)
  ]


def _opts(**kwargs):
  base = dict(
    batch_size=4,
    min_pixels=56 * 56,
    max_pixels=112 * 112,
    token_buckets=(48, 64, 96),
    patch_buckets=(16, 64),
    seed=0,
    read_threads=0,
  )
  base.update(kwargs)
  return pipeline.PipelineOptions(**base)


def _dataset(source, tokenizer, shard=(0, 1), **kwargs):
  return pipeline.make_dataset(
    source,
    tokenizer,
    _opts(**kwargs),
    prompt_fn=build_prompt,
    completion_fn=format_completion,
    shard_index=shard[0],
    shard_count=shard[1],
  )


def test_batch_layout(tokenizer):
  recs = _records(6) + _records(2, size=(56, 56), start=6)
  source = sources.InMemorySource(recs)
  batches = list(_dataset(source, tokenizer, shuffle=False))
  assert len(batches) == 2
  pad, image_pad = tokenizer.pad_token_id, tokenizer.encode("<|image_pad|>")[0]
  for batch in batches:
    b, t = batch["prompt_ids_BxT"].shape
    n = batch["pixels_IxNxP"].shape[1]
    assert b == 4 and t in (48, 64, 96) and n in (16, 64)
    assert batch["prompt_ids_BxT"].dtype == np.int32
    assert batch["pixels_IxNxP"].dtype == np.float32
    assert batch["pixels_IxNxP"].shape[2] == images.PATCH_DIM
    assert batch["grid_thw_Ix3"].shape == (4, 3)
    for i, rid in enumerate(batch["ids"]):
      record = recs[int(rid[1:])]
      ids, mask = batch["prompt_ids_BxT"][i], batch["prompt_mask_BxT"][i]
      length = int(mask.sum())
      # Left padded: padding first, prompt flush right.
      assert (mask[: t - length] == 0).all() and (mask[t - length :] == 1).all()
      assert (ids[: t - length] == pad).all()
      grid = batch["grid_thw_Ix3"][i]
      assert (ids == image_pad).sum() == grid.prod() // 4
      want, want_grid = images.preprocess(
        record.image.array, min_pixels=56 * 56, max_pixels=112 * 112
      )
      np.testing.assert_array_equal(grid, want_grid)
      num = want.shape[0]
      np.testing.assert_array_equal(batch["pixels_IxNxP"][i, :num], want)
      assert (batch["pixels_IxNxP"][i, num:] == 0).all()
      assert batch["patch_mask_IxN"][i].sum() == num
      assert batch["questions"][i] == record.question
      assert batch["answers"][i] == "liver"
      assert batch["metas"][i] == {"i": int(rid[1:])}
  # The small images (4x4 patches) share a batch with 8x8 ones: padded up.
  assert batches[1]["pixels_IxNxP"].shape[1] == 64
  assert batches[1]["patch_mask_IxN"][-1].sum() == 16


def test_small_examples_use_small_buckets(tokenizer):
  source = sources.InMemorySource(_records(4, size=(56, 56)))
  (batch,) = list(_dataset(source, tokenizer, shuffle=False))
  assert batch["pixels_IxNxP"].shape[1] == 16
  assert batch["prompt_ids_BxT"].shape[1] == 48


def _ids(dataset):
  return [i for batch in dataset for i in batch["ids"]]


def test_shuffle_is_seeded_and_reshuffles_each_epoch(tokenizer):
  source = sources.InMemorySource(_records(8, size=(28, 28)))
  a = _ids(_dataset(source, tokenizer, seed=1))
  assert a == _ids(_dataset(source, tokenizer, seed=1))
  assert sorted(a) == sorted(f"r{i}" for i in range(8))
  assert a != _ids(_dataset(source, tokenizer, seed=2))
  two = _ids(_dataset(source, tokenizer, seed=1, num_epochs=2))
  assert two[:8] == a and sorted(two[8:]) == sorted(a) and two[8:] != a


def test_sharding_per_process(tokenizer):
  source = sources.InMemorySource(_records(8, size=(28, 28)))
  per_process = [
    list(_dataset(source, tokenizer, shard=(i, 2), seed=3)) for i in (0, 1)
  ]
  for batches in per_process:
    assert all(len(b["ids"]) == 2 for b in batches)  # 4 global / 2
  shard_ids = [set(_ids(batches)) for batches in per_process]
  assert not shard_ids[0] & shard_ids[1]
  assert shard_ids[0] | shard_ids[1] == {f"r{i}" for i in range(8)}
  with pytest.raises(ValueError, match="data.batch_size"):
    _dataset(source, tokenizer, shard=(0, 3))


def test_sft_targets(tokenizer):
  source = sources.InMemorySource(_records(4, size=(28, 28)))
  (batch,) = list(_dataset(source, tokenizer, shuffle=False, target_len=96))
  ids, mask = batch["target_ids_BxS"], batch["target_mask_BxS"]
  assert ids.shape == mask.shape == (4, 96) and ids.dtype == np.int32
  length = int(mask[0].sum())
  assert (mask[0, :length] == 1).all() and (mask[0, length:] == 0).all()
  assert ids[0, length - 1] == tokenizer.eos_token_id
  assert (ids[0, length:] == tokenizer.pad_token_id).all()
  text = tokenizer.decode(ids[0, : length - 1])
  assert text == (
    "<think>The liver is enlarged. So the answer is liver.</think>"
    "<answer>liver</answer>"
  )
  assert pipeline.split_sentences("A b. C d?\nE") == ["A b.", "C d?", "E"]
  with pytest.raises(errors.BadRecordError, match="sampling.max_new_tokens"):
    list(_dataset(source, tokenizer, target_len=8))


@pytest.mark.parametrize("read_threads", [0, 2])
def test_checkpoint_state_roundtrip(tokenizer, tmp_path, read_threads):
  """Save mid-epoch (through Orbax), restore into a fresh iterator."""
  import orbax.checkpoint as ocp

  recs = _records(10, size=(28, 28))
  recs[3] = records.Record(
    id="bad", question="q", answer="a", image=records.ImageRef(data=b"xx")
  )
  source = sources.InMemorySource(recs)
  kwargs = dict(
    seed=5, num_epochs=None, on_bad_record="skip", read_threads=read_threads
  )
  reference = iter(_dataset(source, tokenizer, **kwargs))
  expected = [next(reference)["ids"] for _ in range(6)]

  it = iter(_dataset(source, tokenizer, **kwargs))
  assert [next(it)["ids"] for _ in range(2)] == expected[:2]
  json.dumps(it.get_state())  # JSON-able, as Grain's handler needs
  checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  checkpointer.save(tmp_path / "ckpt", args=grain.checkpoint.CheckpointSave(it))
  skipped_at_save = it.stats.num_skipped

  fresh = iter(_dataset(source, tokenizer, **kwargs))
  checkpointer.restore(
    tmp_path / "ckpt", args=grain.checkpoint.CheckpointRestore(fresh)
  )
  assert fresh.stats.num_skipped == skipped_at_save
  assert [next(fresh)["ids"] for _ in range(4)] == expected[2:]
  # Plain get_state / set_state does the same without Orbax.
  again = iter(_dataset(source, tokenizer, **kwargs))
  again.set_state(it.get_state())
  assert [next(again)["ids"] for _ in range(4)] == expected[2:]


# ---- bad records at decode time -------------------------------------------


def _png(path, size=(60, 60)):
  PIL.Image.fromarray(_image(size, 0)).save(path)
  return str(path)


def _bad_cases(tmp_path):
  """(record, expected message, skip kind) for each decode-time failure."""
  root = tmp_path / "root"
  root.mkdir(exist_ok=True)
  text = root / "note.png"
  text.write_text("not an image")
  corrupt = root / "corrupt.png"
  corrupt.write_bytes(open(_png(root / "ok.png"), "rb").read()[:80])
  big = _png(root / "big.png", size=(300, 300))

  def rec(rid, path, question="Which organ?"):
    return records.Record(
      id=rid,
      question=question,
      answer="liver",
      image=records.ImageRef(path=path),
      origin=f"train.json#{rid}",
    )

  return {
    "missing": (rec("m1", str(root / "gone.png")), "not found", "image"),
    "corrupt": (rec("c1", str(corrupt)), "corrupt or truncated", "image"),
    "not_image": (rec("n1", str(text)), "not an image", "image"),
    "bomb": (rec("b1", big), "decompression", "image"),
    "escape": (rec("e1", "../secret.png"), "outside the data root", "image"),
    "patches": (
      rec("p1", _png(root / "wide.png", size=(112, 224))),
      "data.patch_buckets",
      "too_many_patches",
    ),
    "prompt": (
      rec("t1", _png(root / "t.png"), question="why " * 200),
      "data.token_buckets",
      "prompt_too_long",
    ),
  }


def _bad_dataset(tokenizer, tmp_path, bad, mode, read_threads=0):
  good = [
    records.Record(
      id=f"g{i}",
      question="Which organ?",
      answer="liver",
      image=records.ImageRef(path=_png(tmp_path / "root" / f"g{i}.png")),
    )
    for i in range(3)
  ]
  source = sources.InMemorySource([good[0], bad, good[1], good[2]])
  return _dataset(
    source,
    tokenizer,
    batch_size=3,
    shuffle=False,
    on_bad_record=mode,
    max_image_pixels=200 * 200,
    max_pixels=112 * 112 * 2,
    patch_buckets=(64,),
    image_root=str(tmp_path / "root"),
    read_threads=read_threads,
  )


CASES = ["missing", "corrupt", "not_image", "bomb", "escape", "patches"]
CASES += ["prompt"]


@pytest.mark.parametrize("case", CASES)
def test_bad_record_fail(tokenizer, tmp_path, case):
  bad, match, _ = _bad_cases(tmp_path)[case]
  dataset = _bad_dataset(tokenizer, tmp_path, bad, "fail", read_threads=2)
  with pytest.raises(errors.BadRecordError, match=match) as info:
    list(dataset)
  assert info.value.record == bad.id and bad.id in str(info.value)
  assert info.value.file and info.value.file in str(info.value)
  if case in ("missing", "corrupt", "not_image", "bomb"):
    assert bad.image.path in info.value.file
  if case == "escape":  # names the data file and row, and the path
    assert info.value.file == bad.origin
    assert bad.image.path in str(info.value)


@pytest.mark.parametrize("case", CASES)
def test_bad_record_skip(tokenizer, tmp_path, case, caplog):
  bad, _, kind = _bad_cases(tmp_path)[case]
  dataset = _bad_dataset(tokenizer, tmp_path, bad, "skip")
  it = iter(dataset)
  with caplog.at_level(logging.WARNING):
    batch = next(it)
  assert batch["ids"] == ["g0", "g1", "g2"]
  assert it.stats.num_skipped == 1 and it.stats.skipped_by_kind == {kind: 1}
  assert bad.id in it.stats.recent_skips[0]
  assert any(bad.id in r.getMessage() for r in caplog.records)
  assert "skipped 1" in it.stats.summary()


def test_mrpo_json_end_to_end_with_skips(tokenizer, tmp_path):
  (tmp_path / "imgs").mkdir()
  rows = [
    {"image": "imgs/a.png", "problem": "Which organ?", "solution": "liver"},
    {"image": "imgs/gone.png", "problem": "Which organ?", "solution": "x"},
    {"image": "imgs/a.png", "problem": "", "solution": "x"},  # load-time
    {"image": "imgs/b.png", "problem": "Which side?", "solution": 2},
  ]
  _png(tmp_path / "imgs" / "a.png")
  _png(tmp_path / "imgs" / "b.png", size=(90, 40))
  path = tmp_path / "train.json"
  path.write_text(json.dumps(rows))
  source = sources.make_source("mrpo_json", str(path), on_bad_record="skip")
  it = iter(_dataset(source, tokenizer, batch_size=2, on_bad_record="skip"))
  (batch,) = list(it)
  assert sorted(batch["answers"]) == ["2", "liver"]
  assert it.stats.load_skipped == 1 and it.stats.num_skipped == 1
  strict = _dataset(
    sources.MrpoJsonSource(str(path), on_bad_record="skip"),
    tokenizer,
    batch_size=2,
    shuffle=False,
  )
  with pytest.raises(errors.BadRecordError, match="train.json#1"):
    list(strict)


def test_worker_processes_match_in_process(tokenizer):
  source = sources.InMemorySource(_records(8, size=(28, 28)))
  in_process = _ids(_dataset(source, tokenizer, seed=4))
  with_workers = _ids(
    _dataset(
      source,
      tokenizer,
      seed=4,
      num_workers=1,
    )
  )
  assert with_workers == in_process


def test_options_from_config():
  from stepjax import config_utils

  config = config_utils.default_config()
  opts = pipeline.PipelineOptions.from_config(config, sft=True)
  assert opts.token_buckets == tuple(config.data.token_buckets)
  assert opts.target_len == config.sampling.max_new_tokens
  assert opts.on_bad_record == config.data.on_bad_record


def test_synthmed_with_the_shipped_tokenizer():
  """End to end with the real SynthMed source, tokenizer and jax sharding."""
  tokenizer_lib = pytest.importorskip("stepjax.data.tokenizer")
  pytest.importorskip("stepjax.data.synthmed")
  source = sources.make_source("synthmed", num_records=8, seed=0)
  tok = tokenizer_lib.load_tokenizer()
  opts = _opts(token_buckets=(96, 128), patch_buckets=(64,), target_len=64)
  it = iter(pipeline.make_dataset(source, tok, opts))  # jax process 0 of 1
  batches = list(it)
  assert len(batches) == 2 and it.stats.num_examples == 8
  batch = batches[0]
  assert batch["prompt_ids_BxT"].shape[0] == 4
  assert batch["pixels_IxNxP"].shape == (4, 64, images.PATCH_DIM)
  image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
  assert ((batch["prompt_ids_BxT"] == image_pad).sum(1) == 16).all()
  assert (batch["target_mask_BxS"].sum(1) > 0).all()
