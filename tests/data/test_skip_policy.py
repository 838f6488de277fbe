"""data.on_bad_record=skip: a pass that keeps nothing fails, skips are
counted per reason (log, metrics.jsonl, eval report), null parquet image
cells and non-finite answers are bad records."""

import importlib.util
import json
import logging
import math
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stepjax import errors as user_errors
from stepjax.data import errors, pipeline, records, sources
from stepjax.data import tokenizer as tokenizer_lib
from stepjax.data.readers import pathvqa, vqa_rad
from stepjax.eval import report as report_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
DEADLINE_S = 120  # a skip policy that loops would never finish


def _load(name, path):
  spec = importlib.util.spec_from_file_location(name, REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


fixtures = _load("fixtures", "tests/data/readers/fixtures.py")


@pytest.fixture(scope="module")
def tokenizer():
  return tokenizer_lib.load_tokenizer()


def _opts(**kwargs):
  base = dict(
    batch_size=2,
    token_buckets=(96, 128),
    patch_buckets=(64,),
    shuffle=False,
    num_epochs=None,
    on_bad_record="skip",
    read_threads=0,
  )
  base.update(kwargs)
  return pipeline.PipelineOptions(**base)


def _dataset(source, tokenizer, **kwargs):
  return pipeline.make_dataset(
    source, tokenizer, _opts(**kwargs), shard_index=0, shard_count=1
  )


def _next_within(iterator, seconds=DEADLINE_S):
  """next(iterator) in a thread: the test fails, rather than hangs, if the
  iterator never returns. Returns the batch or the exception raised."""
  out = {}

  def target():
    try:
      out["batch"] = next(iterator)
    except BaseException as e:  # noqa: BLE001 - handed to the test
      out["error"] = e

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f"next() did not return in {seconds} s"
  return out.get("error", out.get("batch"))


def _mrpo_json(tmp_path, rows, name="train.json"):
  path = tmp_path / name
  path.write_text(json.dumps(rows))
  return str(path)


def _png(path, size=(60, 60)):
  from PIL import Image

  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(0).integers(0, 256, (*size, 3), np.uint8)
  Image.fromarray(pixels).save(path)


# ---- a pass that keeps nothing ---------------------------------------------


def _missing_images(tmp_path, n=12):
  rows = [
    {"image": f"imgs/gone{i}.png", "problem": "Which organ?", "solution": "x"}
    for i in range(n)
  ]
  return _mrpo_json(tmp_path, rows)


@pytest.mark.parametrize("num_epochs", [None, 1])
def test_all_bad_source_fails_with_the_count(tokenizer, tmp_path, num_epochs):
  path = _missing_images(tmp_path)
  source = sources.MrpoJsonSource(path, on_bad_record="skip")
  it = iter(_dataset(source, tokenizer, num_epochs=num_epochs, shuffle=True))
  error = _next_within(it)
  assert isinstance(error, errors.AllRecordsSkippedError), error
  assert isinstance(error, user_errors.UserError)
  message = str(error)
  assert message.startswith(f"data file {path}: all 12 records")
  assert "(12 image file not found)" in message
  assert "gone" in message  # the first skipped record's image is named
  assert error.count == 12 and error.counts == {"image_file_not_found": 12}
  assert it.stats.num_skipped == 12
  assert it.stats.skipped_by_reason == {"image_file_not_found": 12}


def test_all_bad_with_several_processes(tokenizer, tmp_path):
  """Each of 2 processes reads half a pass: it fails after 2 passes that
  kept nothing (as many reads as one pass), naming itself."""
  source = sources.MrpoJsonSource(
    _missing_images(tmp_path), on_bad_record="skip"
  )
  opts = _opts(batch_size=2, shuffle=True)
  dataset = pipeline.make_dataset(
    source, tokenizer, opts, shard_index=1, shard_count=2
  )
  it = iter(dataset)
  error = _next_within(it)
  assert isinstance(error, errors.AllRecordsSkippedError), error
  want = "all 12 records read in passes 1-2 over the data by process 1 of 2"
  assert want in str(error)
  assert error.count == 12 and it.stats.num_skipped == 12


def test_all_bad_at_load_time_fails_before_reading(tokenizer, tmp_path):
  rows = [
    {"image": "a.png", "problem": "q", "solution": math.nan},
    {"image": "a.png", "problem": "q", "solution": math.inf},
    {"image": "a.png", "problem": "q", "solution": ["a"]},
  ]
  path = _mrpo_json(tmp_path, rows)
  source = sources.MrpoJsonSource(path, on_bad_record="skip")
  with pytest.raises(errors.AllRecordsSkippedError) as info:
    _dataset(source, tokenizer)
  message = str(info.value)
  assert message.startswith(f"data file {path}: all 3 records were skipped")
  assert "2 non finite number in field solution" in message
  assert "1 field solution must be a string or number" in message


def test_a_pass_with_a_good_record_keeps_going_and_logs_once_per_pass(
  tokenizer, tmp_path, caplog
):
  _png(tmp_path / "imgs" / "ok.png")
  rows = [
    {"image": f"imgs/gone{i}.png", "problem": "Which organ?", "solution": "x"}
    for i in range(9)
  ]
  rows.insert(4, {"image": "imgs/ok.png", "problem": "Which?", "solution": "y"})
  source = sources.MrpoJsonSource(
    _mrpo_json(tmp_path, rows), on_bad_record="skip"
  )
  it = iter(_dataset(source, tokenizer, batch_size=2))
  with caplog.at_level(logging.WARNING):
    for _ in range(3):  # 6 good examples: 6 passes over 10 records
      batch = _next_within(it)
      assert not isinstance(batch, BaseException), batch
      assert batch["answers"] == ["y", "y"]
  assert it.stats.num_skipped == 9 * 5 + 4  # pass 6 stops at the good one
  one_by_one = [r for r in caplog.records if "skipping bad record" in r.message]
  per_pass = [r for r in caplog.records if "over the data kept 1" in r.message]
  assert len(one_by_one) == 5
  assert len(per_pass) == 5
  assert "(9 image file not found)" in per_pass[0].message


def test_cli_train_on_all_bad_data_exits_2(tmp_path):
  """`stepjax train` with skip and no usable record: one error line, exit 2
  (before this fix, an endless loop of warnings)."""
  path = _missing_images(tmp_path, n=5)
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "stepjax",
      "train",
      "--config=configs/synthmed_tiny.py:test",
      "--config.mesh.data=1",
      "--config.data.dataset=mrpo_json",
      f"--config.data.path={path}",
      f"--config.data.eval_path={path}",
      "--config.data.on_bad_record=skip",
      f"--workdir={tmp_path / 'run'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr + result.stdout, result.stderr
  errors_printed = [
    line for line in result.stderr.splitlines() if line.startswith("error:")
  ]
  assert len(errors_printed) == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last == errors_printed[0]
  assert last.startswith(f"error: data file {path}: all 5 records"), last
  assert "(5 image file not found)" in last


# ---- parquet: a null image cell --------------------------------------------


def _parquet_rows(null_rows):
  return [
    (
      f"img_{i}.jpg",
      None if i in null_rows else fixtures.image_bytes(f"i{i}", size=56),
      f"what is shown {i}?",
      f"a{i}",
    )
    for i in range(4)
  ]


@pytest.mark.parametrize("reader", ["pathvqa", "vqa_rad"])
def test_parquet_null_image_is_skipped_and_counted(tokenizer, tmp_path, reader):
  shard = tmp_path / "data" / "train-00000-of-00001.parquet"
  fixtures.write_parquet(shard, _parquet_rows({1}))
  open_source = {
    "pathvqa": pathvqa.PathVqaSource,
    "vqa_rad": vqa_rad.open_source,
  }
  source = open_source[reader](tmp_path, split="train", on_bad_record="skip")
  it = iter(_dataset(source, tokenizer, batch_size=3, num_epochs=1))
  batch = _next_within(it)
  assert not isinstance(batch, BaseException), batch
  assert batch["answers"] == ["a0", "a2", "a3"]
  assert it.stats.skipped_by_reason == {"image_bytes_are_missing": 1}
  message = it.stats.recent_skips[0]
  assert str(shard) in message and "row 1 of the shard" in message
  assert f"{source.dataset}/train/1" in message
  # With "fail" the same row stops the run, naming the shard and row.
  strict = open_source[reader](tmp_path, split="train")
  with pytest.raises(errors.BadRecordError, match="row 1 of the shard") as e:
    list(_dataset(strict, tokenizer, on_bad_record="fail", num_epochs=1))
  assert e.value.file == str(shard)


def test_parquet_all_null_images_fail_naming_the_shard(tokenizer, tmp_path):
  shard = tmp_path / "data" / "train-00000-of-00001.parquet"
  fixtures.write_parquet(shard, _parquet_rows({0, 1, 2, 3}))
  source = pathvqa.PathVqaSource(tmp_path, on_bad_record="skip")
  error = _next_within(iter(_dataset(source, tokenizer)))
  assert isinstance(error, errors.AllRecordsSkippedError), error
  assert str(error).startswith(f"data file {shard}: all 4 records")
  assert "(4 image bytes are missing)" in str(error)


# ---- non-finite numbers and wrong types ------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_mrpo_json_non_finite_answer(tmp_path, literal):
  path = tmp_path / "train.json"
  good = '{"image": "a.png", "problem": "q", "solution": "yes"}'
  bad = f'{{"image": "a.png", "problem": "q", "solution": {literal}}}'
  path.write_text(f"[{good}, {bad}]")
  with pytest.raises(errors.BadRecordError, match="non-finite number") as e:
    sources.MrpoJsonSource(str(path))
  assert e.value.file == str(path) and e.value.record == "#1"
  assert literal.lower().lstrip("-")[:3] in str(e.value)
  source = sources.MrpoJsonSource(str(path), on_bad_record="skip")
  assert [r.answer for r in source] == ["yes"] and len(source.skipped) == 1


def test_mrpo_json_non_string_question(tmp_path):
  rows = [{"image": "a.png", "problem": math.nan, "solution": "a"}]
  with pytest.raises(errors.BadRecordError, match="'problem'"):
    sources.MrpoJsonSource(_mrpo_json(tmp_path, rows))


def test_reader_non_finite_answer_and_question(tmp_path):
  root = tmp_path / "vqa_rad"
  items = [
    {
      "qid": i,
      "image_name": "synpic1.jpg",
      "question": question,
      "answer": answer,
      "phrase_type": "freeform",
    }
    for i, (question, answer) in enumerate(
      [("How many?", 2), ("Is it?", math.nan), (math.inf, "yes"), ("Q", True)]
    )
  ]
  root.mkdir()
  (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(items))
  file = str(root / "VQA_RAD Dataset Public.json")
  with pytest.raises(errors.BadRecordError, match="non-finite") as e:
    vqa_rad.VqaRadJsonSource(root)
  assert e.value.file == file and e.value.record == "vqa_rad/train/1"
  source = vqa_rad.VqaRadJsonSource(root, on_bad_record="skip")
  assert [r.answer for r in source] == ["2"]
  reasons = [reason for _, reason in source.skipped]
  assert len(reasons) == 3
  assert "'answer'" in reasons[0] and "'question'" in reasons[1]
  assert "must be a string or number, got bool" in reasons[2]


def test_parquet_nan_answer_column(tmp_path):
  shard = tmp_path / "data" / "train-00000-of-00001.parquet"
  shard.parent.mkdir(parents=True)
  image = pa.array(
    [{"bytes": fixtures.image_bytes(f"{i}"), "path": f"{i}.jpg"} for i in "01"]
  )
  answer = pa.array([1.5, math.nan])
  pq.write_table(
    pa.table({"image": image, "question": ["q0", "q1"], "answer": answer}),
    shard,
  )
  with pytest.raises(errors.BadRecordError, match="non-finite") as e:
    pathvqa.PathVqaSource(tmp_path)
  assert e.value.file == str(shard) and e.value.record == "pathvqa/train/1"
  source = pathvqa.PathVqaSource(tmp_path, on_bad_record="skip")
  assert [r.answer for r in source] == ["1.5"] and len(source.skipped) == 1


def test_text_value_is_the_one_check():
  ok = {"a": "a", 3: "3", 2.5: "2.5", np.int64(4): "4", np.float32(0.5): "0.5"}
  for value, text in ok.items():
    assert records.text_value(value, "answer") == text
  for value in (math.nan, -math.inf, np.float64("nan")):
    with pytest.raises(errors.BadRecordError, match="non-finite"):
      records.text_value(value, "answer", file="f.json", record="r1")
  for value in (True, None, [1], {"a": 1}, np.bool_(True), 1j):
    with pytest.raises(errors.BadRecordError, match="string or number"):
      records.text_value(value, "answer", file="f.json", record="r1")
  # Sources that build Records directly cannot slip a number through.
  with pytest.raises(errors.BadRecordError, match="answer must be text") as e:
    records.Record(
      "r9", "q", math.nan, records.ImageRef(path="a.png"), origin="x.json#9"
    )
  assert e.value.record == "r9" and e.value.file == "x.json#9"


def test_reason_keys_and_report_field():
  assert errors.reason_key("image file not found") == "image_file_not_found"
  assert errors.reason_key("cannot read image file: [Errno 13] x") == (
    "cannot_read_image_file"
  )
  assert errors.reason_key(
    "image path ../x resolves to /x, outside the data root /d; move it"
  ) == ("path_outside_root")
  report = report_lib.build_report([], skipped={"image_file_not_found": 2})
  assert report["skipped"] == {
    "total": 2,
    "by_reason": {"image_file_not_found": 2},
  }
  assert report_lib.build_report([])["skipped"] == {"total": 0, "by_reason": {}}


# ---- totals in metrics.jsonl and the eval report ---------------------------


def test_trainer_writes_skip_totals(tmp_path, monkeypatch):
  """A tiny SFT run whose train and eval data each hold one record with a
  missing image: metrics.jsonl and the eval report count it by reason."""
  from stepjax import jobs
  from stepjax.train import components
  from stepjax.train import metrics as metrics_lib

  tiny_run = _load("tiny_run", "tests/eval/tiny_run.py")
  make_source = components.make_source

  def with_a_bad_record(config, split):
    good = make_source(config, split)
    bad = records.Record(
      id=f"bad-{split}",
      question="Which organ?",
      answer="liver",
      image=records.ImageRef(path=str(tmp_path / "gone.png")),
      origin=f"{split}.json#0",
    )
    return sources.InMemorySource(
      [*(good[i] for i in range(len(good))), bad], on_bad_record="skip"
    )

  monkeypatch.setattr(components, "make_source", with_a_bad_record)
  config = tiny_run.config(
    **{
      "data.on_bad_record": "skip",
      "data.num_train": 4,  # 2 SFT steps of 4 read every record
      "train.steps": 0,
      "train.eval_before_rl": False,
    }
  )
  workdir = tmp_path / "run"
  jobs.train(config, str(workdir))
  rows = metrics_lib.read_metrics(str(workdir))
  assert rows and all("data_skipped" in r for r in rows)
  last = rows[-1]
  assert last["data_skipped"] >= 1
  assert last["data_skipped_image_file_not_found"] == last["data_skipped"]
  report = json.loads((workdir / "eval" / "final" / "report.json").read_text())
  assert report["skipped"] == {
    "total": 1,
    "by_reason": {"image_file_not_found": 1},
  }
  assert report["num_records"] == 4
