"""Hugging Face parquet copies: `image` {bytes, path}, `question`, `answer`.

The text columns of every shard are read upfront (small); the image bytes
are read per row group on access, with a small cache, so a split never sits
in memory whole. Random access into parquet decodes a whole row group per
miss: for shuffled training at scale, build the ArrayRecord copy with
`stepjax data build-tfds` (see tfds_builders.py).
"""

from __future__ import annotations

import collections
import posixpath
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from etils import epath

from stepjax.data import errors, records
from stepjax.data.readers import base, paths
from stepjax.errors import MissingInputError

_TEXT_COLUMNS = ("question", "answer")


def find_shards(root: epath.Path, split: str) -> list[epath.Path]:
  """The parquet shards of `split` under `root` (a directory or one file).

  Looks for `data/{split}-*.parquet` (the Hugging Face layout), then
  `{split}-*.parquet` and `{split}/*.parquet`.
  """
  if root.suffix == ".parquet":
    return [root]
  patterns = (
    f"data/{split}-*.parquet",
    f"{split}-*.parquet",
    f"{split}/*.parquet",
  )
  for pattern in patterns:
    shards = paths.glob_sorted(root, pattern)
    if shards:
      return shards
  raise MissingInputError(
    f"{root}: no parquet shards for split {split!r} (looked for "
    f"{', '.join(patterns)}); see docs/datasets.md"
  )


class ParquetVqaSource(base.RecordSource):
  """One split of a parquet VQA dataset; images come back as bytes.

  Record ids are `{dataset}/{split}/{row}`, the row counted over the split's
  shards in name order: stored image paths repeat across splits (PathVQA),
  so they never make an id. meta holds `image_path` (the stored path, may
  be "") and `image_key` (its basename, used to align MedThink rationales).
  """

  splits: Sequence[str] = ("train", "validation", "test")

  def __init__(
    self,
    path: epath.PathLike,
    *,
    split: str = "train",
    on_bad_record: base.OnBadRecord = "fail",
    check_images: bool = False,
    cached_row_groups: int = 2,
  ):
    super().__init__(on_bad_record=on_bad_record)
    self.split = base.checked_split(type(self).__name__, split, self.splits)
    self._files = [str(f) for f in find_shards(paths.as_path(path), split)]
    self._where: dict[str, tuple[int, int, int]] = {}
    self._cache_size = max(1, cached_row_groups)
    self._handles: dict[int, pq.ParquetFile] = {}
    self._cache: collections.OrderedDict = collections.OrderedDict()
    row_number = 0
    for file_index in range(len(self._files)):
      table = self._policy.guard(lambda i=file_index: self._read_text(i))
      if table is None:
        continue
      row_number = self._add_rows(file_index, table, row_number)
    self._finish(check_images)

  @property
  def files(self) -> list[str]:
    """The split's parquet shards, in name order."""
    return list(self._files)

  def _open(self, file_index: int) -> pq.ParquetFile:
    if file_index not in self._handles:
      file = self._files[file_index]
      try:
        handle = paths.as_path(file).open("rb")
        self._handles[file_index] = pq.ParquetFile(handle)
      except (OSError, pa.ArrowException) as e:
        raise errors.BadRecordError(
          f"cannot read parquet ({e}); the file may be truncated or not "
          "parquet: download it again",
          file=file,
        ) from e
    return self._handles[file_index]

  def _read_text(self, file_index: int) -> dict[str, list[Any]]:
    """Reads question, answer and image.path of one shard."""
    file = self._files[file_index]
    parquet = self._open(file_index)
    names = parquet.schema_arrow.names
    for column in (*_TEXT_COLUMNS, "image"):
      if column not in names:
        raise errors.BadRecordError(
          f"missing column {column!r}; the file has {names}", file=file
        )
    try:
      table = parquet.read(columns=[*_TEXT_COLUMNS, "image.path"])
    except (OSError, pa.ArrowException) as e:
      raise errors.BadRecordError(
        f"cannot read columns ({e}); download the file again", file=file
      ) from e
    columns = table.to_pydict()
    columns["image_path"] = [
      (image or {}).get("path") for image in columns.pop("image")
    ]
    columns["row_groups"] = [
      parquet.metadata.row_group(g).num_rows
      for g in range(parquet.metadata.num_row_groups)
    ]
    return columns

  def _add_rows(self, file_index: int, table: dict, row_number: int) -> int:
    file = self._files[file_index]
    locations = [
      (group, offset)
      for group, size in enumerate(table["row_groups"])
      for offset in range(size)
    ]
    for i, (group, offset) in enumerate(locations):
      row_id = f"{self.dataset}/{self.split}/{row_number + i}"
      item = {name: table[name][i] for name in _TEXT_COLUMNS}
      image_path = table["image_path"][i] or ""

      def make(item=item, row_id=row_id, image_path=image_path, i=i):
        return base.Row(
          id=row_id,
          question=base.text_field(item, "question", file=file, record=row_id),
          answer=base.text_field(item, "answer", file=file, record=row_id),
          dataset=self.dataset,
          file=file,
          origin=f"{file}:{i}",
          meta={
            "split": self.split,
            "image_path": image_path,
            "image_key": posixpath.basename(image_path),
          },
        )

      row = self._policy.guard(make)
      if row is not None:
        self._rows.append(row)
        self._where[row_id] = (file_index, group, offset)
    return row_number + len(locations)

  def _image_bytes(self, row: base.Row) -> bytes | None:
    file_index, group, offset = self._where[row.id]
    key = (file_index, group)
    if key not in self._cache:
      try:
        table = self._open(file_index).read_row_group(group, columns=["image"])
      except (OSError, pa.ArrowException) as e:
        raise errors.BadRecordError(
          f"cannot read row group {group} ({e}); download the file again",
          file=row.file,
          record=row.id,
        ) from e
      self._cache[key] = table.column("image")
      while len(self._cache) > self._cache_size:
        self._cache.popitem(last=False)
    self._cache.move_to_end(key)
    image = self._cache[key][offset].as_py() or {}
    return image.get("bytes")

  def row_image(self, row: base.Row) -> records.ImageRef:
    """The row's image bytes; a null or empty image cell is a bad record
    (skipped and counted under on_bad_record="skip") naming the shard and
    its row."""
    data = self._image_bytes(row)
    if not data:
      raise errors.BadRecordError(
        _missing_bytes(row), file=row.file, record=row.id
      )
    return records.ImageRef(data=data)

  def image_problem(self, row: base.Row) -> str | None:
    try:
      data = self._image_bytes(row)
    except errors.BadRecordError as e:
      return e.reason
    return None if data else _missing_bytes(row)

  def __getstate__(self) -> dict[str, Any]:
    # Open files and cached row groups stay behind: Grain workers reopen.
    state = self.__dict__.copy()
    state["_handles"] = {}
    state["_cache"] = collections.OrderedDict()
    return state


def _missing_bytes(row: base.Row) -> str:
  shard_row = row.origin.rpartition(":")[2]
  return (
    f"image bytes are missing (null or empty image cell in row {shard_row} "
    "of the shard); fix the shard or drop the row"
  )
