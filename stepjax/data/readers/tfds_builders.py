"""TFDS builders writing ArrayRecord copies of the VQA datasets.

A pod reads one preprocessed copy instead of every host parsing json and
parquet: `stepjax data build-tfds --dataset=slake --manual_dir=<SLAKE dir>
--data_dir=gs://bucket/tfds` runs the direct reader (manual_dir is the
dataset's own directory, in the layout the reader expects) and writes each
split as ArrayRecord; `TfdsSource` reads it back with `tfds.data_source`
and yields the same `Record`s, the image as its original encoded bytes.
Neither step needs TensorFlow.

Examples are stored in TFDS's key-hash order, not the reader's; compare by
id. SLAKE is stored English only (as MRPO uses it).
"""

from __future__ import annotations

import json
import operator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from stepjax.data import errors, records
from stepjax.data.readers import base, paths, pathvqa, slake, vqa_rad
from stepjax.errors import InputError

_TEXT = ("id", "question", "answer", "rationale", "dataset", "origin", "meta")


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict(
    {
      **{name: tfds.features.Text() for name in _TEXT},
      # The original encoded file (JPEG, PNG, DICOM), not decoded by
      # TFDS: the pipeline's decode step treats every source alike.
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),
    }
  )


class _VqaBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Runs a direct reader over manual_dir for each split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  SPLITS: tuple[str, ...] = ()
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Put the dataset's own directory (see docs/datasets.md) in manual_dir."
  )

  # TFDS derives code_path through the `importlib_resources` backport,
  # which is not installed on Python >= 3.9 (tfds 4.9.10): name it here.
  code_path = epath.Path(__file__)

  def __init__(self, *, on_bad_record: base.OnBadRecord = "fail", **kwargs):
    self._on_bad_record = on_bad_record
    super().__init__(**kwargs)

  def _reader(self, root: epath.Path, split: str) -> base.RecordSource:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(self.__doc__ or "").strip(),
      features=_features(),
    )

  def _split_generators(self, dl_manager):
    root = paths.as_path(dl_manager.manual_dir)
    return {
      split: self._generate_examples(root, split) for split in self.SPLITS
    }

  def _generate_examples(self, root: epath.Path, split: str):
    source = self._reader(root, split)
    for index in range(len(source)):
      record = source[index]
      yield record.id, to_example(record)


def to_example(record: records.Record) -> dict[str, Any]:
  """A Record as a TFDS example (the image read into bytes)."""
  image = record.image
  if image.data is not None:
    data = image.data
  elif image.path is not None:
    data = paths.as_path(image.path).read_bytes()
  else:
    raise errors.BadRecordError(
      "decoded image arrays cannot be stored; give a path or bytes",
      file=record.origin,
      record=record.id,
    )
  return {
    "id": record.id,
    "question": record.question,
    "answer": record.answer,
    "rationale": record.rationale,
    "dataset": record.dataset,
    "origin": record.origin,
    "meta": json.dumps(dict(record.meta), ensure_ascii=False),
    "image": data,
  }


class StepjaxVqaRad(_VqaBuilder):
  """VQA-RAD (original release or parquet copy), train and test."""

  SPLITS = vqa_rad.SPLITS

  def _reader(self, root, split):
    return vqa_rad.open_source(
      root, split=split, on_bad_record=self._on_bad_record
    )


class StepjaxSlake(_VqaBuilder):
  """SLAKE, English questions, train / validation / test."""

  SPLITS = slake.SPLITS

  def _reader(self, root, split):
    return slake.SlakeSource(
      root, split=split, q_lang="en", on_bad_record=self._on_bad_record
    )


class StepjaxPathvqa(_VqaBuilder):
  """PathVQA (parquet copy), train / validation / test."""

  SPLITS = pathvqa.SPLITS

  def _reader(self, root, split):
    return pathvqa.PathVqaSource(
      root, split=split, on_bad_record=self._on_bad_record
    )


BUILDERS = {
  "vqa_rad": StepjaxVqaRad,
  "slake": StepjaxSlake,
  "pathvqa": StepjaxPathvqa,
}


def builder_name(dataset: str) -> str:
  """The TFDS name of a dataset's builder ("slake" -> "stepjax_slake")."""
  if dataset not in BUILDERS:
    raise InputError(f"no TFDS builder for {dataset!r}; have {list(BUILDERS)}")
  return BUILDERS[dataset].name


def build(
  dataset: str,
  manual_dir: epath.PathLike,
  data_dir: epath.PathLike,
  *,
  on_bad_record: base.OnBadRecord = "fail",
) -> tfds.core.DatasetBuilder:
  """Builds `dataset` from manual_dir into data_dir as ArrayRecord."""
  builder_name(dataset)
  builder = BUILDERS[dataset](
    data_dir=str(data_dir),
    file_format="array_record",
    on_bad_record=on_bad_record,
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  )
  return builder


class TfdsSource:
  """A built ArrayRecord split, read with `tfds.data_source`, as Records.

  path: the TFDS data_dir given to `build` (holds stepjax_<dataset>/).
  """

  def __init__(
    self,
    path: epath.PathLike,
    *,
    dataset: str,
    split: str = "train",
    on_bad_record: base.OnBadRecord = "fail",
  ):
    base.BadRecordPolicy(on_bad_record)  # validates the argument
    self.dataset = dataset
    self.split = split
    self.skipped: list[tuple[str, str]] = []  # filtered when it was built
    self._where = f"{path} ({builder_name(dataset)}, split {split})"
    self._source = tfds.data_source(
      builder_name(dataset), split=split, data_dir=str(path), download=False
    )

  def __len__(self) -> int:
    return len(self._source)

  def __iter__(self):
    for index in range(len(self)):
      yield self[index]

  def __getitem__(self, index) -> records.Record:
    index = operator.index(index)
    if not 0 <= index < len(self):
      raise IndexError(f"{self._where}: index {index} out of range")
    example = self._source[index]
    text = {name: _text(example[name]) for name in _TEXT}
    if not example["image"]:
      raise errors.BadRecordError(
        "image bytes are empty", file=self._where, record=text["id"]
      )
    return records.Record(
      id=text["id"],
      question=text["question"],
      answer=text["answer"],
      image=records.ImageRef(data=bytes(example["image"])),
      rationale=text["rationale"],
      dataset=text["dataset"],
      origin=text["origin"],
      meta=json.loads(text["meta"]),
    )

  def __repr__(self) -> str:
    return f"TfdsSource({self._where}, {len(self)} records)"


def vqa_rad_source(path: epath.PathLike, **kwargs: Any) -> TfdsSource:
  """Registry factory: the built `stepjax_vqa_rad` under data_dir `path`."""
  return TfdsSource(path, dataset="vqa_rad", **kwargs)


def slake_source(path: epath.PathLike, **kwargs: Any) -> TfdsSource:
  """Registry factory: the built `stepjax_slake` under data_dir `path`."""
  return TfdsSource(path, dataset="slake", **kwargs)


def pathvqa_source(path: epath.PathLike, **kwargs: Any) -> TfdsSource:
  """Registry factory: the built `stepjax_pathvqa` under data_dir `path`."""
  return TfdsSource(path, dataset="pathvqa", **kwargs)


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
