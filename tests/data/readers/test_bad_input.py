"""Bad input: errors name file and record; skip mode drops and counts."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stepjax.data import errors
from stepjax.data.readers import medthink, ood, pathvqa, slake, vqa_rad

from . import fixtures

ROWS = fixtures.VQA_RAD_ROWS


def _rad(tmp_path, rows):
  return fixtures.write_vqa_rad(tmp_path / "rad", rows)


def test_duplicate_ids(tmp_path):
  root = _rad(tmp_path, [*ROWS, ROWS[0]])
  with pytest.raises(errors.BadRecordError, match="duplicate id") as e:
    vqa_rad.VqaRadJsonSource(root)
  assert e.value.file.endswith("VQA_RAD Dataset Public.json")
  assert "vqa_rad/train/0" in e.value.record
  source = vqa_rad.VqaRadJsonSource(root, on_bad_record="skip")
  assert len(source) == 4
  assert len(source.skipped) == 1
  where, reason = source.skipped[0]
  assert "vqa_rad/train/0" in where and "duplicate" in reason


def test_missing_fields(tmp_path):
  root = _rad(tmp_path, ROWS)
  path = root / "VQA_RAD Dataset Public.json"
  items = json.loads(path.read_text())
  del items[1]["question"]
  items[3]["answer"] = None
  items[2]["answer"] = "   "
  path.write_text(json.dumps(items))
  with pytest.raises(errors.BadRecordError) as e:
    vqa_rad.VqaRadJsonSource(root)
  assert e.value.record == "vqa_rad/train/1"
  assert "missing field 'question'" in str(e.value)
  assert str(path) in str(e.value)
  source = vqa_rad.VqaRadJsonSource(root, on_bad_record="skip")
  assert [source[i].id for i in range(len(source))] == ["vqa_rad/train/0"]
  reasons = sorted(r for _, r in source.skipped)
  assert reasons == [
    "field 'answer' is empty",
    "missing field 'answer'",
    "missing field 'question'",
  ]


def test_missing_images_checked_upfront(tmp_path):
  root = fixtures.write_slake(tmp_path / "slake")
  (root / "imgs" / "xmlab2" / "source.jpg").unlink()
  lazy = slake.SlakeSource(root)  # not checked: the decode step would fail
  assert len(lazy) == 4
  with pytest.raises(errors.BadRecordError, match="does not exist") as e:
    slake.SlakeSource(root, check_images=True)
  assert e.value.record == "slake/train/13"
  assert e.value.file.endswith("train.json")
  source = slake.SlakeSource(root, check_images=True, on_bad_record="skip")
  assert [source[i].id for i in range(len(source))] == [
    "slake/train/10",
    "slake/train/11",
  ]
  assert len(source.skipped) == 2  # both questions on the missing image


def test_truncated_parquet(tmp_path):
  root = fixtures.write_pathvqa(tmp_path / "pathvqa")
  shard = sorted((root / "data").glob("train-00001-*"))[0]
  shard.write_bytes(shard.read_bytes()[:-40])
  with pytest.raises(errors.BadRecordError, match="truncated") as e:
    pathvqa.PathVqaSource(root)
  assert e.value.file == str(shard)
  source = pathvqa.PathVqaSource(root, on_bad_record="skip")
  assert len(source) == 2  # the first shard only
  assert source.skipped[0][0] == str(shard)


def test_parquet_missing_column_and_image_bytes(tmp_path):
  root = tmp_path / "pathvqa"
  fixtures.write_parquet(
    root / "data" / "test-00000-of-00001.parquet",
    [
      ("img_1.jpg", fixtures.image_bytes("a"), "what?", "x"),
      ("img_2.jpg", None, "what else?", "y"),
    ],
  )
  lazy = pathvqa.PathVqaSource(root, split="test")
  with pytest.raises(errors.BadRecordError, match="image bytes") as e:
    lazy[1]
  assert e.value.record == "pathvqa/test/1"
  checked = pathvqa.PathVqaSource(
    root, split="test", check_images=True, on_bad_record="skip"
  )
  assert len(checked) == 1 and len(checked.skipped) == 1
  image = pa.array([{"bytes": b"\xff\xd8\xff", "path": "img_1.jpg"}])
  pq.write_table(  # an integer answer column
    pa.table({"image": image, "question": ["how many?"], "answer": [7]}),
    root / "data" / "train-00000-of-00001.parquet",
  )
  assert pathvqa.PathVqaSource(root, split="train")[0].answer == "7"
  pq.write_table(
    pa.table({"question": ["q"], "answer": ["a"]}),
    root / "data" / "validation-00000-of-00001.parquet",
  )
  with pytest.raises(errors.BadRecordError, match="missing column 'image'"):
    pathvqa.PathVqaSource(root, split="validation")


def test_missing_files_name_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="VQA_RAD Dataset Public.json"):
    vqa_rad.VqaRadJsonSource(tmp_path)
  with pytest.raises(FileNotFoundError, match="no parquet shards"):
    pathvqa.PathVqaSource(tmp_path)
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    medthink.find_file(tmp_path, "slake", "train")


def _medthink(tmp_path, items, raw=None):
  path = tmp_path / "train.json"
  path.write_text(raw if raw is not None else json.dumps(items))
  return path


def _item(**kw):
  return {"image": "synpic1.jpg", "question": "q?", "choices": ["a", "b"],
          "answer": 0, "solution": "s", **kw}  # fmt: skip


def test_medthink_integer_answers(tmp_path):
  path = _medthink(tmp_path, {"1": _item(answer=1), "2": _item(answer="b")})
  rationales, _ = medthink.load(path, dataset="vqa_rad")
  assert [r.answer for r in rationales] == ["b", "b"]
  path = _medthink(tmp_path, {"1": _item(answer=0), "9": _item(answer=2)})
  with pytest.raises(errors.BadRecordError, match="out of range") as e:
    medthink.load(path, dataset="vqa_rad")
  assert (e.value.file, e.value.record) == (str(path), "9")
  rationales, skipped = medthink.load(
    path, dataset="vqa_rad", on_bad_record="skip"
  )
  assert [r.id for r in rationales] == ["1"]
  assert skipped == [(f"{path}:9", "answer index 2 out of range for 2 choices")]


def test_medthink_missing_fields_and_duplicate_ids(tmp_path):
  item = json.dumps(_item())
  raw = '{"1": ' + item + ', "2": {"question": "q?"}, "1": ' + item + "}"
  path = _medthink(tmp_path, None, raw=raw)
  with pytest.raises(errors.BadRecordError, match="duplicate problem id"):
    medthink.load(path, dataset="vqa_rad")
  rationales, skipped = medthink.load(
    path, dataset="vqa_rad", on_bad_record="skip"
  )
  assert [r.id for r in rationales] == ["1"]
  assert [w for w, _ in skipped] == [f"{path}:1", f"{path}:2"]
  assert "missing image field" in skipped[1][1]


def test_bad_lines_in_ood_files(tmp_path):
  root = fixtures.write_vqa_med(tmp_path / "med")
  text = root / "VQAMed2019_Test_Questions_w_Ref_Answers.txt"
  text.write_text(text.read_text() + "synpic9|only two\n")
  with pytest.raises(errors.BadRecordError, match="line 4"):
    ood.VqaMed2019Source(root)
  assert len(ood.VqaMed2019Source(root, on_bad_record="skip").skipped) == 1
  root = fixtures.write_quilt_vqa(tmp_path / "quilt")
  jsonl = root / "quilt_vqa.jsonl"
  jsonl.write_text(jsonl.read_text() + "{not json\n")
  skipping = ood.QuiltVqaSource(root, on_bad_record="skip")
  assert len(skipping) == 2 and "line 3" in skipping.skipped[0][0]


def test_on_bad_record_is_validated(tmp_path):
  root = _rad(tmp_path, ROWS)
  with pytest.raises(ValueError, match="on_bad_record"):
    vqa_rad.VqaRadJsonSource(root, on_bad_record="ignore")
