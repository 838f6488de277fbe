"""MIMIC-CXR-VQA: the release's json layout, answers as lists, path policy."""

import json
import math
import os
import pathlib

import pytest

from stepjax.data import errors, images, pipeline, sources, tokenizer
from stepjax.data.readers import mimic_cxr_vqa
from stepjax.errors import InputError, MissingInputError

from . import fixtures

ROWS = fixtures.MIMIC_CXR_VQA_ROWS
TEST_FILE = pathlib.Path("dataset") / "test.json"


@pytest.fixture
def root(tmp_path) -> pathlib.Path:
  return fixtures.write_mimic_cxr_vqa(tmp_path / "MIMIC-CXR-VQA")


def _all(source):
  return [source[i] for i in range(len(source))]


def _edit(root: pathlib.Path, index: int, **fields) -> pathlib.Path:
  """Sets (or, with value ..., deletes) fields of test.json item `index`."""
  path = root / TEST_FILE
  items = json.loads(path.read_text())
  for key, value in fields.items():
    if value is ...:
      del items[index][key]
    else:
      items[index][key] = value
  path.write_text(json.dumps(items))
  return path


def test_test_split_ids_answers_and_meta(root):
  source = mimic_cxr_vqa.MimicCxrVqaSource(root, check_images=True)
  records = _all(source)
  assert [r.id for r in records] == [
    "mimic_cxr_vqa/test/13280",
    "mimic_cxr_vqa/test/13281",
    "mimic_cxr_vqa/test/13282",
  ]
  assert [r.answer for r in records] == [
    "pleural effusion, atelectasis",
    "none",  # an empty answer set
    "no",
  ]
  assert records[0].meta["answers"] == ["pleural effusion", "atelectasis"]
  assert records[1].meta["answers"] == []
  assert [r.meta["answer_type"] for r in records] == ["OPEN", "OPEN", "CLOSED"]
  first = records[0]
  assert first.dataset == "mimic_cxr_vqa"
  assert first.question == "List all anatomical findings in the right lung."
  _, subject, study, dicom, *_ = ROWS["test"][0]
  relative = fixtures.mimic_image_path(subject, study, dicom)
  assert first.image.path == str(root / "files" / relative)
  assert first.meta["image_key"] == relative
  assert first.meta["subject_id"] == "10001217"
  assert first.meta["semantic_type"] == "query"
  assert first.meta["split"] == "test"
  assert images.decode_image(first.image).shape[:2] == (8, 8)
  assert not source.skipped


def test_other_splits_and_the_validation_alias(root):
  train = mimic_cxr_vqa.MimicCxrVqaSource(root, split="train")
  assert [r.id for r in _all(train)] == ["mimic_cxr_vqa/train/0"]
  assert train[0].answer == "yes"
  for name in ("valid", "validation"):
    valid = mimic_cxr_vqa.MimicCxrVqaSource(root, split=name)
    assert [r.id for r in _all(valid)] == ["mimic_cxr_vqa/valid/0"]
  with pytest.raises(InputError, match="split must be one of"):
    mimic_cxr_vqa.MimicCxrVqaSource(root, split="dev")


def test_flat_layout_dataset_folder_and_image_dir(root, tmp_path):
  # The json files straight in the folder, files/ beside them.
  flat = tmp_path / "flat"
  flat.mkdir()
  (flat / "test.json").write_text((root / TEST_FILE).read_text())
  (flat / "files").symlink_to(root / "files")
  assert len(mimic_cxr_vqa.MimicCxrVqaSource(flat, check_images=True)) == 3
  # The release's own dataset/ folder given: files/ is found one level up.
  inner = mimic_cxr_vqa.MimicCxrVqaSource(root / "dataset", check_images=True)
  assert inner.image_dir == root / "files"
  # MIMIC-CXR-JPG elsewhere: image_dir.
  jpg = tmp_path / "mimic-cxr-jpg" / "2.0.0"
  jpg.mkdir(parents=True)
  (root / "files").rename(jpg / "files")
  source = mimic_cxr_vqa.MimicCxrVqaSource(
    root, image_dir=jpg / "files", check_images=True
  )
  assert source[0].image.path.startswith(str(jpg / "files") + "/p10/")


def test_registered_as_a_data_dataset(root):
  source = sources.make_source(
    "mimic_cxr_vqa", str(root), split="test", on_bad_record="fail"
  )
  assert len(source) == 3
  assert "mimic_cxr_vqa" in sources.source_names()


def test_gs_paths(root, tmp_path):
  with fixtures.fake_gcs(tmp_path) as touched:
    source = mimic_cxr_vqa.MimicCxrVqaSource(
      fixtures.gs("MIMIC-CXR-VQA"), check_images=True
    )
    assert source[2].image.path.startswith(
      f"{fixtures.FAKE_BUCKET}/MIMIC-CXR-VQA/files/p10/p10002428/"
    )
  assert any(p.endswith("dataset/test.json") for p in touched)


def test_missing_files_and_malformed_json(root, tmp_path):
  with pytest.raises(MissingInputError, match="test.json"):
    mimic_cxr_vqa.MimicCxrVqaSource(tmp_path / "nowhere")
  (root / TEST_FILE).write_text('[{"idx": 1,')
  with pytest.raises(InputError, match="not valid JSON"):
    mimic_cxr_vqa.MimicCxrVqaSource(root)
  (root / TEST_FILE).write_text('{"idx": 1}')
  with pytest.raises(errors.BadRecordError, match="expected a JSON list"):
    mimic_cxr_vqa.MimicCxrVqaSource(root)


@pytest.mark.parametrize(
  "fields, reason",
  [
    ({"answer": ...}, "missing field 'answer' (the public `_test.json`"),
    ({"answer": None}, "missing field 'answer'"),
    ({"answer": ["ok", 3.5, ""]}, "holds an empty string at [2]"),
    ({"answer": ["ok", math.nan]}, "non-finite number in field 'answer[1]'"),
    ({"answer": ["ok", ["nested"]]}, "'answer[1]' must be a string or number"),
    ({"answer": True}, "'answer' must be a string or number"),
    ({"question": "  "}, "field 'question' is empty"),
    ({"image_path": ...}, "missing field 'image_path'"),
    ({"idx": 13282}, "duplicate id"),
  ],
)
def test_bad_records_fail_or_are_skipped(root, fields, reason):
  path = _edit(root, 1, **fields)
  with pytest.raises(errors.BadRecordError) as info:
    mimic_cxr_vqa.MimicCxrVqaSource(root)
  assert reason in str(info.value)
  assert info.value.file == str(path)
  assert "mimic_cxr_vqa/test/" in info.value.record
  source = mimic_cxr_vqa.MimicCxrVqaSource(root, on_bad_record="skip")
  assert len(source) == 2
  [(where, skipped_reason)] = source.skipped
  assert str(path) in where and reason in skipped_reason


def test_a_string_answer_is_read_as_is(root):
  _edit(root, 0, answer="Left lower lobe")
  source = mimic_cxr_vqa.MimicCxrVqaSource(root)
  assert source[0].answer == "Left lower lobe"
  assert source[0].meta["answers"] == ["Left lower lobe"]


def test_missing_images_checked_upfront(root):
  _, subject, study, dicom, *_ = ROWS["test"][2]
  (root / "files" / fixtures.mimic_image_path(subject, study, dicom)).unlink()
  source = mimic_cxr_vqa.MimicCxrVqaSource(
    root, on_bad_record="skip", check_images=True
  )
  assert [r.id for r in _all(source)] == [
    "mimic_cxr_vqa/test/13280",
    "mimic_cxr_vqa/test/13281",
  ]
  assert "does not exist" in source.skipped[0][1]


# ------------------------------------------------------------ path policy
@pytest.fixture
def secret(tmp_path) -> pathlib.Path:
  """A valid JPEG outside the data root: reading it would work."""
  path = tmp_path / "outside" / "secret.jpg"
  path.parent.mkdir()
  path.write_bytes(fixtures.image_bytes("secret"))
  return path


def _escape(kind: str, files: pathlib.Path, secret: pathlib.Path) -> str:
  if kind == "dotdot":
    return os.path.relpath(secret, files)
  if kind == "absolute":
    return str(secret)
  (files / "p10" / "evil.jpg").symlink_to(secret)
  return "p10/evil.jpg"


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_image_path_escaping_files_fails_naming_the_record(root, secret, kind):
  files = root / "files"
  path = _edit(root, 1, image_path=_escape(kind, files, secret))
  with pytest.raises(errors.PathOutsideRootError) as info:
    mimic_cxr_vqa.MimicCxrVqaSource(root)
  e = info.value
  assert (e.file, e.record) == (str(path), "mimic_cxr_vqa/test/13281")
  assert e.resolved == str(secret.resolve())
  assert e.root == str(files.resolve())
  assert "outside the data root" in str(e)
  source = mimic_cxr_vqa.MimicCxrVqaSource(
    root, on_bad_record="skip", check_images=True
  )
  assert [r.id for r in _all(source)] == [
    "mimic_cxr_vqa/test/13280",
    "mimic_cxr_vqa/test/13282",
  ]
  [(where, reason)] = source.skipped
  assert "mimic_cxr_vqa/test/13281" in where
  assert "outside the data root" in reason
  kept = [r.image.path for r in _all(source)]
  assert not any(p.startswith(str(secret.parent)) for p in kept)


def test_symlinks_inside_the_root_are_fine(root, tmp_path):
  """An alias under files/, and files/ itself a link to MIMIC-CXR-JPG."""
  _, subject, study, dicom, *_ = ROWS["test"][0]
  target = fixtures.mimic_image_path(subject, study, dicom)
  (root / "files" / "alias.jpg").symlink_to(root / "files" / target)
  _edit(root, 1, image_path="alias.jpg")
  store = tmp_path / "disk" / "files"
  store.parent.mkdir()
  (root / "files").rename(store)
  (root / "files").symlink_to(store)
  source = mimic_cxr_vqa.MimicCxrVqaSource(root, check_images=True)
  assert source[1].image.path == str(store / target)
  assert source[0].image.path == str(store / target)


def test_through_the_pipeline_into_a_batch(root):
  source = mimic_cxr_vqa.MimicCxrVqaSource(root)
  opts = pipeline.PipelineOptions(
    batch_size=3,
    token_buckets=(256,),
    patch_buckets=(64,),
    shuffle=False,
    read_threads=0,
  )
  dataset = pipeline.make_dataset(
    source, tokenizer.load_tokenizer(""), opts, shard_index=0, shard_count=1
  )
  batch = next(iter(dataset))
  assert [str(i) for i in batch["ids"]] == [r.id for r in _all(source)]
  assert batch["pixels_IxNxP"].shape[0] == 3
