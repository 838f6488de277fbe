"""One path policy: no reader or build-mrpo leaves its data root.

Every image path a record names is resolved (symlinks, `..`, absolute
paths) and refused with `PathOutsideRootError` naming the file, the record
and the root when it lands outside the data root; `on_bad_record="skip"`
drops and counts the record. A secret file outside the root is a valid
JPEG, so a reader that let the path through would happily read it.
"""

import csv
import dataclasses
import json
import os
import pathlib
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from stepjax.data import cli, errors, images, records, sources
from stepjax.data.readers import (
  build_mrpo,
  medthink,
  ood,
  paths,
  pathvqa,
  slake,
  tfds_builders,
  vqa_rad,
)

from . import fixtures

SECRET = fixtures.image_bytes("secret")  # decodes: reading it would work
KINDS = ("dotdot", "absolute", "symlink")


@pytest.fixture
def secret(tmp_path) -> pathlib.Path:
  """tmp_path/outside/secret.jpg, next to (never under) any data root."""
  path = tmp_path / "outside" / "secret.jpg"
  path.parent.mkdir()
  path.write_bytes(SECRET)
  return path


def _escape(kind: str, image_dir: pathlib.Path, secret: pathlib.Path) -> str:
  """An image path, relative to `image_dir`, that reaches `secret`."""
  if kind == "dotdot":
    return os.path.relpath(secret, image_dir)
  if kind == "absolute":
    return str(secret)
  link = image_dir / f"evil{secret.suffix}"
  link.symlink_to(secret)
  return link.name


# ---------------------------------------------------------- fixture edits
def _set_json(file: pathlib.Path, index: int, field: str, value: str):
  items = json.loads(file.read_text())
  items[index][field] = value
  file.write_text(json.dumps(items, ensure_ascii=False))


def _set_jsonl(file: pathlib.Path, index: int, field: str, value: str):
  items = [json.loads(line) for line in file.read_text().splitlines()]
  items[index][field] = value
  file.write_text("".join(json.dumps(i) + "\n" for i in items))


def _set_csv(file: pathlib.Path, index: int, field: str, value: str):
  with open(file, newline="") as f:
    rows = list(csv.DictReader(f))
  rows[index][field] = value
  with open(file, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def _set_pipe(file: pathlib.Path, index: int, value: str):
  lines = file.read_text().splitlines()
  lines[index] = "|".join([value, *lines[index].split("|")[1:]])
  file.write_text("\n".join(lines) + "\n")


def _write_mrpo(root: pathlib.Path) -> pathlib.Path:
  """An MRPO json file (train.json) with two records and imgs/."""
  (root / "imgs").mkdir(parents=True)
  for name in ("a", "b"):
    (root / "imgs" / f"{name}.jpg").write_bytes(fixtures.image_bytes(name))
  rows = [
    {"id": "ok", "image": "imgs/a.jpg", "problem": "Which?", "solution": "x"},
    {"id": "bad", "image": "imgs/b.jpg", "problem": "Where?", "solution": "y"},
  ]
  (root / "train.json").write_text(json.dumps(rows))
  return root


# ---------------------------------------------------------------- readers
@dataclasses.dataclass(frozen=True)
class Reader:
  """A reader that takes image paths from its records, on its fixture.

  image_dir / data_file: relative to the fixture directory; record: the
  record whose image path a test replaces; target: an image the fixture
  holds (relative to image_dir); suffix: what the reader appends to the
  record's value (VQA-Med names `<image id>.jpg`).
  """

  name: str
  write: Callable[[pathlib.Path], Any]
  image_dir: str
  data_file: str
  record: str
  target: str
  set_image: Callable[[pathlib.Path, str], None]
  open: Callable[[pathlib.Path, str], Any]
  suffix: str = ""


READERS = [
  Reader(
    "mrpo_json",
    _write_mrpo,
    ".",
    "train.json",
    "bad (#1)",
    "imgs/a.jpg",
    lambda f, v: _set_json(f, 1, "image", v),
    lambda d, mode: sources.MrpoJsonSource(
      str(d / "train.json"), on_bad_record=mode
    ),
  ),
  Reader(
    "vqa_rad",
    fixtures.write_vqa_rad,
    "VQA_RAD Image Folder",
    "VQA_RAD Dataset Public.json",
    "vqa_rad/train/0",
    "synpic101.jpg",
    lambda f, v: _set_json(f, 0, "image_name", v),
    lambda d, mode: vqa_rad.open_source(
      d, split="train", on_bad_record=mode, check_images=True
    ),
  ),
  Reader(
    "slake",
    fixtures.write_slake,
    "imgs",
    "train.json",
    "slake/train/10",
    "xmlab2/source.jpg",
    lambda f, v: _set_json(f, 0, "img_name", v),
    lambda d, mode: slake.SlakeSource(
      d, split="train", on_bad_record=mode, check_images=True
    ),
  ),
  Reader(
    "pmc_vqa",
    fixtures.write_pmc_vqa,
    "images",
    "test_clean.csv",
    "pmc_vqa/test_clean/0",
    "PMC2_fig3.jpg",
    lambda f, v: _set_csv(f, 0, "Figure_path", v),
    lambda d, mode: ood.PmcVqaSource(
      d, split="test_clean", on_bad_record=mode, check_images=True
    ),
  ),
  Reader(
    "vqa_med_2019",
    fixtures.write_vqa_med,
    "VQAMed2019_Test_Images",
    "VQAMed2019_Test_Questions_w_Ref_Answers.txt",
    "vqa_med_2019/test/1",
    "synpic1002.jpg",
    lambda f, v: _set_pipe(f, 0, v),
    lambda d, mode: ood.VqaMed2019Source(
      d, on_bad_record=mode, check_images=True
    ),
    suffix=".jpg",
  ),
  Reader(
    "quilt_vqa",
    fixtures.write_quilt_vqa,
    "images",
    "quilt_vqa.jsonl",
    "quilt_vqa/0",
    "quilt_2.jpg",
    lambda f, v: _set_jsonl(f, 0, "image", v),
    lambda d, mode: ood.QuiltVqaSource(
      d, on_bad_record=mode, check_images=True
    ),
  ),
]
BY_NAME = {r.name: r for r in READERS}


def _prepare(reader: Reader, tmp_path: pathlib.Path, value_of) -> tuple:
  """Writes the fixture and points the record's image at value_of(dir)."""
  root = tmp_path / "data" / reader.name
  reader.write(root)
  image_dir = root / reader.image_dir
  value = value_of(image_dir)
  if reader.suffix:
    assert value.endswith(reader.suffix)
    value = value[: -len(reader.suffix)]
  reader.set_image(root / reader.data_file, value)
  return root, image_dir


def _skipped(source) -> list[tuple[str, str]]:
  """(where, reason) of skipped records, from either kind of source."""
  return [
    (f"{s.file}:{s.record}", s.reason)
    if isinstance(s, errors.BadRecordError)
    else tuple(s)
    for s in source.skipped
  ]


def _ids(source) -> list[str]:
  return [source[i].id for i in range(len(source))]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_escaping_image_path_fails_naming_the_record(
  tmp_path, secret, name, kind
):
  reader = BY_NAME[name]
  root, image_dir = _prepare(
    reader, tmp_path, lambda d: _escape(kind, d, secret)
  )
  with pytest.raises(errors.PathOutsideRootError) as info:
    reader.open(root, "fail")
  e = info.value
  file = str(root / reader.data_file)
  assert isinstance(e, errors.BadRecordError)
  assert (e.file, e.record) == (file, reader.record)
  assert e.resolved == str(secret.resolve())
  assert e.root == str(image_dir.resolve())
  assert str(e).startswith(f"record {reader.record} in {file}: image path ")
  assert f"resolves to {secret.resolve()}, outside the data root" in str(e)
  if name == "mrpo_json":  # its root is a config key
    assert "or set --config.data.image_root to a directory" in str(e)
  else:
    assert "move the file under the root or fix the path" in str(e)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_escaping_image_path_is_skipped_and_counted(
  tmp_path, secret, name, kind
):
  reader = BY_NAME[name]
  root, _ = _prepare(reader, tmp_path, lambda d: _escape(kind, d, secret))
  source = reader.open(root, "skip")
  skipped = _skipped(source)
  assert len(skipped) == 1
  where, reason = skipped[0]
  assert reader.record in where
  assert "outside the data root" in reason
  assert len(source) > 0
  kept = [source[i].image.path for i in range(len(source))]
  assert str(secret.resolve()) not in kept
  assert all(not p.startswith(str(secret.parent)) for p in kept)


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_symlink_inside_the_root_still_works(tmp_path, name):
  reader = BY_NAME[name]

  def alias(image_dir):
    link = image_dir / "alias.jpg"
    link.symlink_to(image_dir / reader.target)
    return link.name

  root, image_dir = _prepare(reader, tmp_path, alias)
  source = reader.open(root, "fail")  # check_images where the reader has it
  assert not source.skipped
  by_id = {source[i].id: source[i] for i in range(len(source))}
  record_id = reader.record.split(" ")[0]  # MRPO: "bad (#1)" -> "bad"
  path = by_id[record_id].image.path
  target = image_dir / reader.target
  assert path == str(target.resolve())
  decoded = images.decode_image(records.ImageRef(path=path))
  assert decoded.shape[:2] == (8, 8)


def test_absolute_and_dotted_paths_inside_the_root_work(tmp_path):
  root = _write_mrpo(tmp_path / "mrpo")
  _set_json(root / "train.json", 0, "image", str(root / "imgs" / "a.jpg"))
  _set_json(root / "train.json", 1, "image", "imgs/../imgs/./b.jpg")
  source = sources.MrpoJsonSource(str(root / "train.json"))
  assert [r.image.path for r in source] == [
    str(root / "imgs" / "a.jpg"),
    str(root / "imgs" / "b.jpg"),
  ]


def test_mrpo_image_root_admits_absolute_paths_elsewhere(tmp_path):
  """data.image_root: images kept apart from the json (absolute paths, as
  DATA_FORMATS allows) are read when they lie under it; relative paths stay
  relative to the json file; anything outside it is still refused, and the
  error names the key to set."""
  root = _write_mrpo(tmp_path / "data" / "mrpo")
  store = tmp_path / "data" / "scans"
  store.mkdir()
  (root / "imgs" / "a.jpg").rename(store / "a.jpg")
  _set_json(root / "train.json", 0, "image", str(store / "a.jpg"))
  with pytest.raises(errors.PathOutsideRootError, match="data.image_root"):
    sources.MrpoJsonSource(str(root / "train.json"))
  source = sources.MrpoJsonSource(
    str(root / "train.json"), image_root=str(tmp_path / "data")
  )
  assert source[0].image.path == str(store / "a.jpg")
  assert source[1].image.path == str(root / "imgs" / "b.jpg")  # relative
  outside = tmp_path / "elsewhere.jpg"
  outside.write_bytes((store / "a.jpg").read_bytes())
  _set_json(root / "train.json", 0, "image", str(outside))
  with pytest.raises(errors.PathOutsideRootError, match="outside the data"):
    sources.MrpoJsonSource(
      str(root / "train.json"), image_root=str(tmp_path / "data")
    )
  # The config key reaches the source.
  from stepjax import config_utils
  from stepjax.train import components

  config = config_utils.with_updates(
    config_utils.default_config(),
    {
      "data.dataset": "mrpo_json",
      "data.path": str(root / "train.json"),
      "data.image_root": str(tmp_path / "data"),
    },
  )
  _set_json(root / "train.json", 0, "image", str(store / "a.jpg"))
  assert components.make_source(config, "train")[0].image.path == str(
    store / "a.jpg"
  )


def test_symlinked_image_folder_is_the_root(tmp_path):
  """`imgs -> /mnt/disk/imgs` is fine: the root is compared resolved."""
  root = fixtures.write_slake(tmp_path / "slake")
  store = tmp_path / "disk" / "imgs"
  store.parent.mkdir()
  (root / "imgs").rename(store)
  (root / "imgs").symlink_to(store)
  source = slake.SlakeSource(root, check_images=True)
  assert len(source) == 4
  assert source[0].image.path == str(store / "xmlab1" / "source.jpg")
  _set_json(root / "train.json", 0, "img_name", "../../slake/train.json")
  with pytest.raises(errors.PathOutsideRootError, match="slake/train/10"):
    slake.SlakeSource(root)


def test_gs_paths_are_normalised_without_io(tmp_path):
  root = fixtures.write_slake(tmp_path / "slake")
  _set_json(root / "train.json", 0, "img_name", "xmlab1/../../train.json")
  with fixtures.fake_gcs(tmp_path) as touched:
    with pytest.raises(errors.PathOutsideRootError) as info:
      slake.SlakeSource(fixtures.gs("slake"))
    source = slake.SlakeSource(fixtures.gs("slake"), on_bad_record="skip")
  assert info.value.root == f"{fixtures.FAKE_BUCKET}/slake/imgs"
  assert info.value.resolved == f"{fixtures.FAKE_BUCKET}/slake/train.json"
  assert info.value.record == "slake/train/10"
  assert _ids(source) == ["slake/train/11", "slake/train/13", "slake/train/14"]
  image = source[0].image.path
  assert image == f"{fixtures.FAKE_BUCKET}/slake/imgs/xmlab1/source.jpg"
  assert not any("/imgs/" in p for p in touched)  # no image was looked up
  for bad in ("../x.jpg", "gs://other-bucket/x.jpg", "/etc/x.jpg"):
    with pytest.raises(errors.PathOutsideRootError):
      paths.inside_root("gs://b/data", bad, record="r")
  assert str(paths.inside_root("gs://b/data", "a//./b/../c.jpg")) == (
    "gs://b/data/a/c.jpg"
  )
  with pytest.raises(errors.PathOutsideRootError):  # local root, gs image
    paths.inside_root(tmp_path, "gs://b/data/x.jpg")


def test_decode_with_a_root_applies_the_policy(tmp_path, secret):
  """The pipeline's image_root: the same policy, naming the data row."""
  root = tmp_path / "root"
  root.mkdir()
  (root / "ok.jpg").write_bytes(fixtures.image_bytes("ok"))
  (root / "alias.jpg").symlink_to(root / "ok.jpg")
  (root / "evil.jpg").symlink_to(secret)
  for bad in ("evil.jpg", str(secret), "../outside/secret.jpg"):
    with pytest.raises(errors.PathOutsideRootError) as info:
      images.decode_image(
        records.ImageRef(path=bad),
        str(root),
        record_id="r7",
        origin="train.json#7",
      )
    assert str(info.value).startswith("record r7 in train.json#7: ")
  image = images.decode_image(records.ImageRef(path="alias.jpg"), str(root))
  assert image.shape == (8, 8, 3)


def test_error_survives_pickling():
  """Grain worker processes send errors back pickled."""
  e = errors.PathOutsideRootError(
    "../x.jpg", "/x.jpg", "/data", file="a.json", record="7"
  )
  clone = pickle.loads(pickle.dumps(e))
  assert type(clone) is errors.PathOutsideRootError
  assert str(clone) == str(e)
  assert (clone.file, clone.record, clone.root) == ("a.json", "7", "/data")


# ----------------------------------------- readers that never read paths
def test_parquet_image_paths_are_never_read(tmp_path, secret):
  """PathVQA and the VQA-RAD parquet copy carry bytes; `path` is a name."""
  escaping = os.path.relpath(secret, tmp_path / "pathvqa" / "data")
  for name in ("pathvqa", "vqa_rad_hf"):
    fixtures.write_parquet(
      tmp_path / name / "data" / "train-00000-of-00001-ab.parquet",
      [(escaping, fixtures.image_bytes("mine"), "what is shown?", "cells")],
    )
  for source in (
    pathvqa.PathVqaSource(tmp_path / "pathvqa", check_images=True),
    vqa_rad.open_source(tmp_path / "vqa_rad_hf", check_images=True),
  ):
    assert not source.skipped
    assert source[0].image.data == fixtures.image_bytes("mine")
    assert source[0].image.path is None
    assert source[0].meta["image_key"] == "secret.jpg"  # a key, not a file


def test_medthink_image_fields_are_keys_never_paths(tmp_path):
  """A MedThink `image` aligns by its basename; the file is never read."""
  raw = tmp_path / "raw"
  fixtures.write_vqa_rad(raw / "VQA_RAD")
  fixtures.write_medthink(raw / "MedThink")
  decoy = tmp_path / "outside" / "synpic100.jpg"
  decoy.parent.mkdir()
  decoy.write_bytes(SECRET)
  trainset = raw / "MedThink" / "R-RAD" / "open-end" / "trainset.json"
  items = json.loads(trainset.read_text())
  items["r1"]["image"] = os.path.relpath(decoy, trainset.parent)
  trainset.write_text(json.dumps(items))
  rationales, skipped = medthink.load(trainset, dataset="vqa_rad")
  assert not skipped
  assert {r.id: r.image_key for r in rationales}["r1"] == "synpic100.jpg"
  out = tmp_path / "mrpo"
  build_mrpo.build(
    out, medthink_dir=raw / "MedThink", datasets={"vqa_rad": raw / "VQA_RAD"}
  )
  train = {e["id"]: e for e in json.loads((out / "train.json").read_text())}
  copied = (out / train["vqa_rad/train/0"]["image"]).read_bytes()
  assert copied == fixtures.image_bytes("rad/synpic100.jpg")
  assert not _files_holding(out, SECRET)


# ----------------------------------------------------------- build-mrpo
class _Flags:
  out = ""


def _files_holding(directory: pathlib.Path, data: bytes) -> list[str]:
  return [
    str(p)
    for p in directory.rglob("*")
    if p.is_file() and p.read_bytes() == data
  ]


def _snapshot(tmp_path: pathlib.Path, *outs: pathlib.Path) -> dict:
  """Every file under tmp_path but those under `outs`, with its bytes."""
  return {
    str(p): p.read_bytes()
    for p in tmp_path.rglob("*")
    if p.is_file()
    and not p.is_symlink()
    and not any(out in p.parents for out in outs)
  }


@pytest.fixture
def raw_with_secret(tmp_path):
  """VQA-RAD and MedThink, and outside/secret.txt next to them."""
  raw = tmp_path / "raw"
  fixtures.write_vqa_rad(raw / "VQA_RAD")
  fixtures.write_medthink(raw / "MedThink")
  secret = tmp_path / "outside" / "secret.txt"
  secret.parent.mkdir()
  secret.write_bytes(b"top secret: not an image of anyone's")
  return raw, secret


def _build_args(raw, out, *extra):
  return [
    "build-mrpo",
    f"--vqa_rad={raw / 'VQA_RAD'}",
    f"--medthink={raw / 'MedThink'}",
    f"--out={out}",
    *extra,
  ]


@pytest.mark.parametrize("kind", KINDS)
def test_build_mrpo_never_copies_a_file_outside_the_root(
  tmp_path, raw_with_secret, kind
):
  raw, secret = raw_with_secret
  image_dir = raw / "VQA_RAD" / "VQA_RAD Image Folder"
  json_file = raw / "VQA_RAD" / "VQA_RAD Dataset Public.json"
  _set_json(json_file, 0, "image_name", _escape(kind, image_dir, secret))
  out, skip_out = tmp_path / "mrpo", tmp_path / "mrpo_skip"
  before = _snapshot(tmp_path, out, skip_out)
  with pytest.raises(errors.PathOutsideRootError) as info:
    cli.main(_build_args(raw, out), None, _Flags())
  assert (info.value.file, info.value.record) == (
    str(json_file),
    "vqa_rad/train/0",
  )
  assert str(secret.resolve()) in str(info.value)
  counts = build_mrpo.build(
    skip_out,
    medthink_dir=raw / "MedThink",
    datasets={"vqa_rad": raw / "VQA_RAD"},
    on_bad_record="skip",
  )
  assert counts["vqa_rad"]["train"]["reader_skipped"] == 1
  assert counts["skipped"] == 1
  skipped = json.loads((skip_out / "skipped.json").read_text())
  assert "vqa_rad/train/0" in skipped[0][0]
  assert "outside the data root" in skipped[0][1]
  train = json.loads((skip_out / "train.json").read_text())
  assert "vqa_rad/train/0" not in {e["id"] for e in train}
  assert len(train) == 1  # vqa_rad/train/2 is still built
  secret_bytes = secret.read_bytes()
  for directory in (out, skip_out):
    if directory.exists():
      assert not _files_holding(directory, secret_bytes)
  # Nothing was written outside the output directories.
  assert _snapshot(tmp_path, out, skip_out) == before


@pytest.mark.parametrize("kind", KINDS)
def test_build_mrpo_reference_mode_refuses_too(tmp_path, raw_with_secret, kind):
  raw, secret = raw_with_secret
  image_dir = raw / "VQA_RAD" / "VQA_RAD Image Folder"
  json_file = raw / "VQA_RAD" / "VQA_RAD Dataset Public.json"
  _set_json(json_file, 0, "image_name", _escape(kind, image_dir, secret))
  out = tmp_path / "mrpo"
  counts = cli.build_mrpo(
    _build_args(raw, out, "--images=reference", "--on_bad_record=skip")[1:],
    _Flags(),
  )
  assert counts["skipped"] == 1
  train = json.loads((out / "train.json").read_text())
  assert "vqa_rad/train/0" not in {e["id"] for e in train}
  referenced = {os.path.realpath(out / e["image"]) for e in train}
  assert str(secret.resolve()) not in referenced
  assert all("evil" not in e["image"] for e in train)


def test_build_mrpo_never_writes_outside_out(tmp_path, raw_with_secret):
  """A symlinked folder (or file) inside out leading elsewhere is refused."""
  raw, _ = raw_with_secret
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  out = tmp_path / "mrpo"
  (out / "images").mkdir(parents=True)
  (out / "images" / "vqa_rad").symlink_to(elsewhere)
  with pytest.raises(errors.PathOutsideRootError, match="output path") as info:
    cli.main(_build_args(raw, out), None, _Flags())
  assert info.value.record == "vqa_rad/train/0"
  assert info.value.root == str(out.resolve())
  counts = build_mrpo.build(
    out,
    medthink_dir=raw / "MedThink",
    datasets={"vqa_rad": raw / "VQA_RAD"},
    on_bad_record="skip",
  )
  assert counts["vqa_rad"]["train"]["image_errors"] == 2
  assert counts["total"] == {"train": 0, "test": 0}
  assert list(elsewhere.iterdir()) == []
  (out / "images" / "vqa_rad").unlink()
  (out / "counts.json").unlink()
  (out / "counts.json").symlink_to(elsewhere / "counts.json")
  with pytest.raises(errors.PathOutsideRootError, match="output file"):
    build_mrpo.build(
      out, medthink_dir=raw / "MedThink", datasets={"vqa_rad": raw / "VQA_RAD"}
    )
  assert list(elsewhere.iterdir()) == []


# ----------------------------------------------------------------- TFDS
@pytest.mark.parametrize("kind", KINDS)
def test_tfds_build_refuses_and_skips(tmp_path, secret, kind):
  raw = fixtures.write_vqa_rad(tmp_path / "vqa_rad")
  image_dir = raw / "VQA_RAD Image Folder"
  json_file = raw / "VQA_RAD Dataset Public.json"
  _set_json(json_file, 0, "image_name", _escape(kind, image_dir, secret))
  with pytest.raises(errors.PathOutsideRootError, match="vqa_rad/train/0"):
    tfds_builders.build("vqa_rad", raw, tmp_path / "tfds_fail")
  tfds_builders.build("vqa_rad", raw, tmp_path / "tfds", on_bad_record="skip")
  stored = tfds_builders.TfdsSource(
    tmp_path / "tfds", dataset="vqa_rad", split="train"
  )
  assert sorted(r.id for r in stored) == fixtures.VQA_RAD_TRAIN[1:]
  assert all(r.image.data != SECRET for r in stored)
