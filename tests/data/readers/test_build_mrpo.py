"""`stepjax data build-mrpo` on fixtures: the selection, counts, round trip."""

import json
import os
import pathlib

import pytest
from absl import app

from stepjax.data import cli, errors, sources

from . import fixtures


class _Flags:
  """Stands in for absl's flag values (only --out is read)."""

  out = ""


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  root = tmp_path_factory.mktemp("raw")
  fixtures.write_vqa_rad(root / "VQA_RAD")
  fixtures.write_slake(root / "Slake1.0")
  fixtures.write_pathvqa(root / "path-vqa")
  fixtures.write_medthink(root / "MedThink")
  return root


def _args(raw, out, *extra):
  return [
    "build-mrpo",
    f"--vqa_rad={raw / 'VQA_RAD'}",
    f"--slake={raw / 'Slake1.0'}",
    f"--pathvqa={raw / 'path-vqa'}",
    f"--medthink={raw / 'MedThink'}",
    f"--out={out}",
    *extra,
  ]


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
  out = tmp_path_factory.mktemp("mrpo")
  cli.main(_args(raw, out), None, _Flags())
  return out


def _read(path: pathlib.Path):
  return json.loads(path.read_text())


def test_selects_exactly_the_paper_rows(built):
  train = _read(built / "train.json")
  test = _read(built / "test.json")
  assert {e["id"]: e["rationale"] for e in train} == {
    i: fixtures.solution(p) for i, p in fixtures.MRPO_TRAIN.items()
  }
  assert [e["id"] for e in train] == list(fixtures.MRPO_TRAIN)
  assert {e["id"]: e["rationale"] for e in test} == {
    i: fixtures.solution(p) if p else "" for i, p in fixtures.MRPO_TEST.items()
  }
  for entry in train + test:
    assert set(entry) == {"image", "problem", "solution", "id", "rationale"}
  by_id = {e["id"]: e for e in train}
  assert by_id["vqa_rad/train/2"]["solution"] == "2"
  assert by_id["slake/train/13"]["problem"] == "What modality is used?"
  rationales = _read(built / "rationales.json")
  assert set(rationales) == set(fixtures.MRPO_TRAIN) | {
    "vqa_rad/test/4",
    "pathvqa/test/0",
  }


def test_counts(built, capsys):
  counts = _read(built / "counts.json")
  assert counts["total"] == {"train": 6, "test": 4}
  assert counts["skipped"] == 0
  rad = counts["vqa_rad"]
  assert rad["train"] == {
    "raw": 4,
    "rationales": 4,
    "matched": 3,
    "unmatched_rationales": 1,
    "yes_no_dropped": 1,
    "image_errors": 0,
    "reader_skipped": 0,
    "kept": 2,
    "with_rationale": 2,
  }
  assert rad["test"]["raw"] == 3 and rad["test"]["kept"] == 2
  assert rad["test"]["with_rationale"] == 1
  assert counts["slake"]["train"]["raw"] == 4  # English only
  assert counts["slake"]["test"]["rationales"] == 0  # no R-SLAKE test file
  assert counts["pathvqa"]["train"]["matched"] == 2
  report = _read(built / "alignment.json")
  unmatched = {
    r["dataset"]: [u["id"] for u in r["unmatched_items"]]
    for r in report
    if r["split"] == "train"
  }
  assert unmatched == fixtures.MRPO_UNMATCHED


def test_round_trip_images(built):
  """Every image path resolves against the file and holds the right image."""
  for split in ("train", "test"):
    for entry in _read(built / f"{split}.json"):
      assert not pathlib.PurePath(entry["image"]).is_absolute()
      assert (built / entry["image"]).is_file(), entry
  train = {e["id"]: e for e in _read(built / "train.json")}
  test = {e["id"]: e for e in _read(built / "test.json")}
  # Train and test PathVQA `img_1.jpg` are different images: both kept.
  train_img = built / train["pathvqa/train/0"]["image"]
  test_img = built / test["pathvqa/test/0"]["image"]
  assert train_img.read_bytes() == fixtures.image_bytes("path/tr1")
  assert test_img.read_bytes() == fixtures.image_bytes("path/te1")
  assert train["slake/train/10"]["image"] == "images/slake/xmlab1_source.jpg"


def test_mrpo_json_source_reads_it(built):
  sources = pytest.importorskip(
    "stepjax.data.sources",
    reason="stepjax/data/sources.py (MrpoJsonSource) is not in yet",
  )
  source = sources.MrpoJsonSource(str(built / "train.json"))
  assert len(source) == len(fixtures.MRPO_TRAIN)
  record = source[0]
  assert record.question == "What modality is used?"
  assert record.answer == "CT"


def test_reference_mode_and_absl_out(raw, tmp_path):
  args = _args(raw, tmp_path, "--images=reference")
  args.remove(f"--out={tmp_path}")
  flags = _Flags()
  flags.out = str(tmp_path)
  cli.main(args, None, flags)
  train = {e["id"]: e for e in _read(tmp_path / "train.json")}
  image = train["vqa_rad/train/0"]["image"]
  assert image.startswith("..")  # points at the raw VQA_RAD folder
  assert (tmp_path / image).resolve() == (
    raw / "VQA_RAD" / "VQA_RAD Image Folder" / "synpic100.jpg"
  )
  assert not (tmp_path / "images" / "vqa_rad").exists()
  assert (tmp_path / train["pathvqa/train/0"]["image"]).is_file()
  # Trainable as written: with a data.image_root holding the raw folders
  # the "../" paths resolve to the raw files; without it they are refused.
  common = os.path.commonpath([str(raw), str(tmp_path)])
  source = sources.MrpoJsonSource(
    str(tmp_path / "train.json"), image_root=common
  )
  by_id = {r.id: r for r in source}
  assert by_id["vqa_rad/train/0"].image.path == str(
    (raw / "VQA_RAD" / "VQA_RAD Image Folder" / "synpic100.jpg").resolve()
  )
  with pytest.raises(errors.PathOutsideRootError, match="data.image_root"):
    sources.MrpoJsonSource(str(tmp_path / "train.json"))


def test_usage_errors(raw):
  with pytest.raises(app.UsageError, match="unknown data tool"):
    cli.main(["build-everything"], None, _Flags())
  with pytest.raises(app.UsageError, match="--out"):
    cli.main(["build-mrpo", f"--slake={raw}", "--medthink=x"], None, _Flags())
