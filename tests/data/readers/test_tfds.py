"""TFDS ArrayRecord build + read-back give the direct readers' records.

Needs no TensorFlow: tfds 4.9 writes ArrayRecord and `tfds.data_source`
reads it with NumPy only.
"""

import pickle

import pytest

from stepjax.data import cli
from stepjax.data.readers import build_mrpo, paths, tfds_builders

from . import fixtures


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  raw = tmp_path_factory.mktemp("raw")
  fixtures.write_vqa_rad(raw / "vqa_rad")
  fixtures.write_slake(raw / "slake")
  fixtures.write_pathvqa(raw / "pathvqa")
  data_dir = tmp_path_factory.mktemp("tfds")
  for dataset in ("vqa_rad", "slake"):
    tfds_builders.build(dataset, raw / dataset, data_dir)
  # PathVQA through the command line tool.
  cli.main(
    [
      "build-tfds",
      "--dataset=pathvqa",
      f"--manual_dir={raw / 'pathvqa'}",
      f"--data_dir={data_dir}",
    ],
    None,
    None,
  )
  return raw, data_dir


def _expected(record):
  """A direct reader's record with its image as bytes, as TFDS stores it."""
  data = record.image.data
  if data is None:
    data = paths.as_path(record.image.path).read_bytes()
  return (
    record.question,
    record.answer,
    record.rationale,
    record.dataset,
    record.origin,
    dict(record.meta),
    data,
  )


@pytest.mark.parametrize(
  "dataset, splits",
  [
    ("vqa_rad", ("train", "test")),
    ("slake", ("train", "validation", "test")),
    ("pathvqa", ("train", "validation", "test")),
  ],
)
def test_read_back_equals_direct_reader(built, dataset, splits):
  raw, data_dir = built
  for split in splits:
    direct = build_mrpo.open_split(dataset, raw / dataset, split)
    stored = tfds_builders.TfdsSource(data_dir, dataset=dataset, split=split)
    assert len(stored) == len(direct)
    expected = {r.id: _expected(r) for r in direct}
    got = {}
    for record in stored:
      assert record.image.data is not None
      got[record.id] = _expected(record)
    assert got == expected


def test_source_pickles_and_bounds(built):
  _, data_dir = built
  source = tfds_builders.TfdsSource(data_dir, dataset="slake", split="test")
  clone = pickle.loads(pickle.dumps(source))
  assert clone[0].id == source[0].id
  with pytest.raises(IndexError):
    source[len(source)]
  with pytest.raises(ValueError, match="no TFDS builder"):
    tfds_builders.builder_name("mimic")
