"""What every reader shares: the bad-record policy and the row list.

A reader parses its files once, upfront, into `Row`s (the text fields, cheap
to keep for a whole split) and builds the `records.Record` on `__getitem__`.
Images stay undecoded: an `ImageRef(path=...)` for image folders, the
encoded bytes for parquet and ArrayRecord, fetched only when a record is
read. An image path a record names goes through `image_ref`, the one path
policy (`paths.inside_root`): it must resolve, symlinks and `..` included,
under the reader's image folder, else the record is bad
(`PathOutsideRootError`).

Bad input follows `on_bad_record`: "fail" raises `errors.BadRecordError`
naming the file and record; "skip" drops the record and appends
`(where, reason)` to `source.skipped` (and logs a count), never silently.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from absl import logging
from etils import epath

from stepjax.data import errors, records
from stepjax.data.readers import paths
from stepjax.errors import InputError

OnBadRecord = Literal["fail", "skip"]
POLICIES = ("fail", "skip")


@dataclasses.dataclass(frozen=True)
class Row:
  """A record without its image resolved (see `RecordSource.row_image`).

  file: the file the row came from; origin: file and row, for messages.
  image: the ImageRef when known at parse time (image folders); None when
    the source fetches it on access (parquet, ArrayRecord).
  """

  id: str
  question: str
  answer: str
  dataset: str
  file: str
  origin: str
  meta: Mapping[str, Any]
  image: records.ImageRef | None = None
  rationale: str = ""


class BadRecordPolicy:
  """Applies "fail" / "skip" and remembers what was skipped."""

  def __init__(self, on_bad_record: str):
    if on_bad_record not in POLICIES:
      raise InputError(
        f"on_bad_record must be one of {POLICIES}, got {on_bad_record!r}"
      )
    self.on_bad_record = on_bad_record
    self.skipped: list[tuple[str, str]] = []

  def handle(self, error: errors.BadRecordError) -> None:
    """Raises `error` ("fail") or records it as skipped ("skip")."""
    if self.on_bad_record == "fail":
      raise error
    where = ":".join(p for p in (error.file, error.record) if p)
    self.skipped.append((where, error.reason))

  def guard(self, fn: Callable[[], Any]) -> Any:
    """Returns `fn()`, or None after handling a BadRecordError it raised."""
    try:
      return fn()
    except errors.BadRecordError as e:
      self.handle(e)
      return None


def text_field(
  item: Mapping[str, Any], name: str, *, file: str, record: str
) -> str:
  """A required text field; numbers become strings (VQA-RAD answers).

  Raises:
    errors.BadRecordError: the field is missing, empty, not text, or a
      non-finite number (`records.text_value`).
  """
  if not isinstance(item, Mapping):
    raise errors.BadRecordError(
      f"expected an object with field {name!r}, got {type(item).__name__}",
      file=file,
      record=record,
    )
  if name not in item or item[name] is None:
    raise errors.BadRecordError(
      f"missing field {name!r}", file=file, record=record
    )
  value = records.text_value(item[name], name, file=file, record=record)
  value = value.strip()
  if not value:
    raise errors.BadRecordError(
      f"field {name!r} is empty", file=file, record=record
    )
  return value


def checked_split(name: str, split: str, splits) -> str:
  """`split` if it is one of `splits`; else an InputError naming `name`'s
  splits (every reader's `split=` argument)."""
  if split not in splits:
    raise InputError(
      f"{name} split must be one of {list(splits)}, got {split!r}"
    )
  return split


def is_yes_no(answer: str) -> bool:
  """True for closed yes/no answers, which MRPO's sets drop."""
  return answer.strip().strip(".").lower() in ("yes", "no")


class RecordSource:
  """Random-access source over parsed rows; subclasses fill `self._rows`.

  Subclasses call `_finish(check_images)` at the end of `__init__`, which
  drops or rejects duplicate ids and, with `check_images`, missing images.
  """

  dataset = ""
  # The data root of the image paths records name (image folders); None
  # for sources whose images are bytes (parquet).
  image_dir: epath.Path | None = None

  def __init__(self, *, on_bad_record: OnBadRecord = "fail"):
    self._policy = BadRecordPolicy(on_bad_record)
    self._rows: list[Row] = []

  @property
  def on_bad_record(self) -> str:
    return self._policy.on_bad_record

  @property
  def skipped(self) -> list[tuple[str, str]]:
    """(where, reason) of every record dropped under on_bad_record="skip"."""
    return self._policy.skipped

  @property
  def rows(self) -> list[Row]:
    """The parsed rows, without loading any image."""
    return self._rows

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, index) -> records.Record:
    row = self._rows[operator.index(index)]
    image = row.image if row.image is not None else self.row_image(row)
    return records.Record(
      id=row.id,
      question=row.question,
      answer=row.answer,
      image=image,
      rationale=row.rationale,
      dataset=row.dataset,
      origin=row.origin,
      meta=dict(row.meta),
    )

  def __iter__(self) -> Iterator[records.Record]:
    for i in range(len(self)):
      yield self[i]

  def __repr__(self) -> str:
    return (
      f"{type(self).__name__}({len(self)} records, {len(self.skipped)} skipped)"
    )

  def image_ref(self, name: str, *, file: str, record: str) -> records.ImageRef:
    """The ImageRef of an image a record names, checked by the path policy.

    `name` (relative to `self.image_dir`, or absolute) must resolve under
    `self.image_dir`, symlinks and `..` included; otherwise
    `paths.inside_root` raises `PathOutsideRootError` naming `file` and
    `record`, which `on_bad_record` handles.
    """
    resolved = paths.inside_root(self.image_dir, name, file=file, record=record)
    return records.ImageRef(path=str(resolved))

  def row_image(self, row: Row) -> records.ImageRef:
    """Fetches the image of a row parsed without one (lazy sources)."""
    raise NotImplementedError(f"{type(self).__name__} has no lazy images")

  def image_problem(self, row: Row) -> str | None:
    """Why the row's image cannot be read, or None; used by check_images."""
    if row.image is not None and row.image.path is not None:
      if not paths.as_path(row.image.path).exists():
        return f"image {row.image.path} does not exist"
    return None

  def _finish(self, check_images: bool) -> None:
    """Rejects duplicate ids and (with check_images) missing images."""
    seen: dict[str, str] = {}
    kept = []
    for row in self._rows:
      if row.id in seen:
        self._policy.handle(
          errors.BadRecordError(
            f"duplicate id (first at {seen[row.id]})",
            file=row.file,
            record=f"{row.id} at {row.origin}",
          )
        )
        continue
      seen[row.id] = row.origin
      kept.append(row)
    if check_images:
      problems: dict[str, str | None] = {}
      checked = []
      for row in kept:
        # Many questions share one image: look each path up once.
        key = row.image.path if row.image is not None else None
        if key is None or key not in problems:
          problem = self.image_problem(row)
          if key is not None:
            problems[key] = problem
        else:
          problem = problems[key]
        if problem is None:
          checked.append(row)
        else:
          self._policy.handle(
            errors.BadRecordError(problem, file=row.file, record=row.id)
          )
      kept = checked
    self._rows = kept
    if self.skipped:
      counts = errors.count_reasons(reason for _, reason in self.skipped)
      logging.warning(
        "%s: skipped %d bad records (%s; first: %s: %s); see .skipped",
        type(self).__name__,
        len(self.skipped),
        errors.describe_counts(counts),
        *self.skipped[0],
      )
