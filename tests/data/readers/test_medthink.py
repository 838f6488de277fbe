"""MedThink rationales: normalisation, alignment, the report."""

import json

import pytest

from stepjax.data.readers import medthink, pathvqa, slake, vqa_rad

from . import fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("medthink")
  fixtures.write_vqa_rad(root / "vqa_rad")
  fixtures.write_slake(root / "slake")
  fixtures.write_pathvqa(root / "pathvqa")
  fixtures.write_medthink(root / "MedThink")
  return root


@pytest.mark.parametrize(
  "text, expected",
  [
    ("What  modality\tis used ?", "what modality is used?"),
    ("Is it  normal , or not ?", "is it normal, or not?"),
    ("  CT  ", "ct"),
  ],
)
def test_normalize(text, expected):
  assert medthink.normalize(text) == expected


def test_find_file_layouts(data):
  root = data / "MedThink"
  assert medthink.find_file(root, "vqa_rad", "train").name == "trainset.json"
  assert medthink.find_file(root, "vqa_rad", "test").name == "testset.json"
  assert medthink.find_file(root / "R-SLAKE", "slake", "train").parent.name == (
    "open-end"
  )
  file = root / "R-PathVQA" / "open-end" / "test.json"
  assert medthink.find_file(file, "pathvqa", "test") == file


@pytest.mark.parametrize(
  "dataset, open_source, matched, unmatched",
  [
    ("vqa_rad", vqa_rad.open_source, ["r1", "r2", "r3"], ["r4"]),
    ("slake", slake.SlakeSource, ["s1", "s2", "s3"], []),
    ("pathvqa", pathvqa.PathVqaSource, ["p1", "p2"], ["p3"]),
  ],
)
def test_alignment(data, dataset, open_source, matched, unmatched):
  source = open_source(data / dataset, split="train")
  file = medthink.find_file(data / "MedThink", dataset, "train")
  rationales, skipped = medthink.load(file, dataset=dataset)
  assert not skipped
  alignment = medthink.align(source.rows, rationales, dataset=dataset)
  assert [r.id for r, _ in alignment.matched] == matched
  assert [r.id for r in alignment.unmatched] == unmatched
  summary = alignment.summary()
  assert summary["matched"] == len(matched)
  assert summary["rows_without_rationale"] == len(source) - len(matched)


def test_slake_keys_and_integer_answer(data):
  file = medthink.find_file(data / "MedThink", "slake", "train")
  rationales, _ = medthink.load(file, dataset="slake")
  s3 = rationales[2]
  assert (s3.image_key, s3.answer) == ("xmlab2_source.jpg", "MRI")
  assert s3.solution == fixtures.solution("s3")


def test_rationale_source_and_report(data, tmp_path):
  source = medthink.RationaleSource(
    vqa_rad.open_source(data / "vqa_rad", split="train"), data / "MedThink"
  )
  rationales = {source[i].id: source[i].rationale for i in range(len(source))}
  assert rationales == {
    "vqa_rad/train/0": fixtures.solution("r1"),
    "vqa_rad/train/1": fixtures.solution("r2"),
    "vqa_rad/train/2": fixtures.solution("r3"),
    "vqa_rad/train/3": "",
  }
  only = medthink.RationaleSource(
    vqa_rad.open_source(data / "vqa_rad", split="train"),
    data / "MedThink",
    only_matched=True,
  )
  assert len(only) == 3
  medthink.write_report([source.alignment], tmp_path / "report.json")
  report = json.loads((tmp_path / "report.json").read_text())
  assert report[0]["matched"] == 3 and report[0]["unmatched"] == 1
  assert report[0]["unmatched_items"][0]["id"] == "r4"
