"""Data sources: Grain random-access sources that yield `records.Record`s.

A source implements Grain's `RandomAccessDataSource` protocol (`__len__`,
`__getitem__(int) -> Record`) and is cheap to pickle: images stay as
`ImageRef`s until the pipeline decodes them, so a missing image file is
found (and handled per `data.on_bad_record`) at decode time, not here.

Sources validate their records when they are built. With
`on_bad_record="fail"` the first bad record raises `BadRecordError` naming
the file and record; with `"skip"` bad records are dropped and kept in
`source.skipped` (a list of `BadRecordError`, so count and reasons are
visible) and a warning is logged. Errors about the whole file (unreadable,
malformed or truncated JSON, not a list) always raise: there is no record
to skip.

`make_source(name, path, **kwargs)` builds a source by its `data.dataset`
name from a registry that other readers extend with `register_source`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import posixpath
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from absl import logging
from etils import epath

from stepjax.data import errors, records
from stepjax.data.readers import paths
from stepjax.errors import InputError

ON_BAD_RECORD = ("fail", "skip")
_MRPO_KEYS = ("image", "problem", "solution", "id", "rationale")


def check_on_bad_record(value: str) -> str:
  """Validates a `data.on_bad_record` value."""
  if value not in ON_BAD_RECORD:
    raise InputError(
      f"data.on_bad_record={value!r}; expected one of {ON_BAD_RECORD}"
    )
  return value


class InMemorySource:
  """A source over a list of records already in memory (SynthMed, tests).

  Record ids must be unique; duplicates are bad records (the later copy is
  the one skipped under "skip").
  """

  def __init__(
    self,
    items: Iterable[records.Record],
    *,
    on_bad_record: str = "fail",
    name: str = "<memory>",
  ):
    check_on_bad_record(on_bad_record)
    self.name = name
    self.skipped: list[errors.BadRecordError] = []
    kept: list[records.Record] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(items):
      try:
        if not isinstance(record, records.Record):
          raise errors.BadRecordError(
            f"expected a Record, got {type(record).__name__}",
            file=name,
            record=f"#{index}",
          )
        if record.id in seen:
          raise errors.BadRecordError(
            f"duplicate id (first seen at index {seen[record.id]})",
            file=record.origin or name,
            record=record.id,
          )
      except errors.BadRecordError as e:
        _handle_bad(e, on_bad_record, self.skipped)
        continue
      seen[record.id] = index
      kept.append(record)
    self._records = tuple(kept)
    _log_skipped(name, self.skipped)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> records.Record:
    return self._records[index]

  def __repr__(self) -> str:
    return f"InMemorySource({self.name}, {len(self)} records)"


class ConcatSource:
  """The records of several sources, one after another (index order)."""

  def __init__(self, parts: Sequence[Any]):
    if not parts:
      raise ValueError("ConcatSource needs at least one source")
    self.parts = tuple(parts)
    self.skipped = [e for p in self.parts for e in getattr(p, "skipped", [])]
    self._ends = np.cumsum([len(p) for p in self.parts])

  def __len__(self) -> int:
    return int(self._ends[-1])

  def __getitem__(self, index: int) -> records.Record:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} records")
    part = int(np.searchsorted(self._ends, index, side="right"))
    start = int(self._ends[part - 1]) if part else 0
    return self.parts[part][index - start]

  def __repr__(self) -> str:
    return f"ConcatSource({', '.join(repr(p) for p in self.parts)})"


def _handle_bad(
  error: errors.BadRecordError,
  on_bad_record: str,
  skipped: list[errors.BadRecordError],
) -> None:
  if on_bad_record == "fail":
    raise error
  skipped.append(error)


def _log_skipped(name: str, skipped: Sequence[errors.BadRecordError]) -> None:
  if not skipped:
    return
  logging.warning(
    "%s: skipped %d bad record(s) at load time (%s; data.on_bad_record="
    "skip); first: %s",
    name,
    len(skipped),
    errors.describe_counts(errors.count_reasons(e.reason for e in skipped)),
    skipped[0],
  )


def _json_error(path: str, text: str, e: json.JSONDecodeError) -> str:
  tail = text[e.pos :].strip()
  if not tail or e.msg.startswith("Unterminated"):
    return (
      f"truncated JSON (input ends at line {e.lineno} column {e.colno}: "
      f"{e.msg}); re-copy or regenerate the file"
    )
  return f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"


_ROOT_FIX = (
  "move the image under it, fix the path, or set --config.data.image_root "
  "to a directory that holds every image of the file"
)


class MrpoJsonSource:
  """The MRPO json format: a list of {"image", "problem", "solution"}.

  `image` is a path relative to the json file's directory or an absolute
  (or gs://) path (DATA_FORMATS), or a non-empty list of such paths: the
  record's images in the order its prompt shows them (one image
  placeholder each, before the question; `data.max_images` bounds how
  many a prompt may hold). Each must resolve, symlinks and
  `..` included, under `image_root` (`data.image_root`, default the json
  file's directory; `readers.paths.inside_root`), else the record is a
  bad record (`PathOutsideRootError`, whose message names
  `data.image_root`). A wider root admits images kept elsewhere, e.g.
  `build-mrpo --images=reference` output ("../raw/...").
  `problem` is the question and `solution` the reference answer, both
  non-empty; a numeric answer (e.g. 3 or 2.5) is accepted and converted
  with `str()`; a non-finite one (JSON `NaN`,
  `Infinity`) and other non-string answers are bad records
  (`records.text_value`). Optional keys: "id" (string or integer; default "<file
  name>#<index>"), "rationale" (gold reasoning text); any other key is kept
  in `Record.meta`. Duplicate ids are bad records.
  """

  def __init__(
    self,
    path: str,
    *,
    on_bad_record: str = "fail",
    image_root: str | None = None,
    dataset: str = "mrpo",
  ):
    check_on_bad_record(on_bad_record)
    self.path = str(path)
    self.dataset = dataset
    self._file_dir = str(epath.Path(self.path).parent)
    self.image_root = image_root or self._file_dir
    self.skipped: list[errors.BadRecordError] = []
    try:
      text = epath.Path(self.path).read_text()
    except FileNotFoundError:
      raise errors.BadRecordError(
        "data file not found; check data.path", file=self.path
      ) from None
    except (OSError, UnicodeDecodeError) as e:
      raise errors.BadRecordError(
        f"cannot read data file: {e}", file=self.path
      ) from None
    try:
      rows = json.loads(text)
    except json.JSONDecodeError as e:
      raise errors.BadRecordError(
        _json_error(self.path, text, e), file=self.path
      ) from None
    if not isinstance(rows, list):
      raise errors.BadRecordError(
        f"expected a JSON list of records, got {type(rows).__name__}",
        file=self.path,
      )
    base = posixpath.basename(self.path)
    kept: list[records.Record] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
      try:
        record = self._parse(row, index, base)
        if record.id in seen:
          raise errors.BadRecordError(
            f"duplicate id (first used by record #{seen[record.id]})",
            file=self.path,
            record=f"{record.id} (#{index})",
          )
      except errors.BadRecordError as e:
        _handle_bad(e, on_bad_record, self.skipped)
        continue
      seen[record.id] = index
      kept.append(record)
    self._records = tuple(kept)
    _log_skipped(self.path, self.skipped)

  def _parse(self, row: Any, index: int, base: str) -> records.Record:
    where = f"#{index}"

    def bad(reason: str) -> errors.BadRecordError:
      return errors.BadRecordError(reason, file=self.path, record=where)

    if not isinstance(row, dict):
      raise bad(f"expected an object, got {type(row).__name__}")
    if "id" in row:
      raw_id = row["id"]
      if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise bad(f"'id' must be a string or integer, got {raw_id!r}")
      record_id = str(raw_id).strip()
      if not record_id:
        raise bad("empty 'id'")
      where = f"{record_id} (#{index})"
    else:
      record_id = f"{base}#{index}"
    missing = [k for k in ("image", "problem", "solution") if k not in row]
    if missing:
      raise bad(f"missing field(s) {missing}")
    image = row["image"]
    paths_K = image if isinstance(image, list) else [image]
    if not paths_K or not all(
      isinstance(x, str) and x.strip() for x in paths_K
    ):
      raise bad(
        "'image' must be a non-empty path string or a non-empty list of "
        f"them, got {image!r}"
      )
    question = row["problem"]
    if not isinstance(question, str):
      raise bad(f"'problem' must be a string, got {question!r}")
    if not question.strip():
      raise bad("empty question ('problem')")
    answer = records.text_value(
      row["solution"], "solution", file=self.path, record=where
    )
    if not answer.strip():
      raise bad("empty answer ('solution')")
    rationale = row.get("rationale", "")
    if not isinstance(rationale, str):
      raise bad(f"'rationale' must be a string, got {type(rationale).__name__}")
    refs = [self._image_ref(p, where) for p in paths_K]
    return records.Record(
      id=record_id,
      question=question.strip(),
      answer=answer.strip(),
      image=refs[0],
      rationale=rationale.strip(),
      dataset=self.dataset,
      origin=f"{self.path}#{index}",
      meta={k: v for k, v in row.items() if k not in _MRPO_KEYS},
      extra_images=tuple(refs[1:]),
    )

  def _image_ref(self, image: str, where: str) -> records.ImageRef:
    """One `image` path resolved (relative to the file) under the root."""
    if not (posixpath.isabs(image) or paths.is_remote(image)):
      image = posixpath.join(self._file_dir, image)  # relative to the file
    image_path = paths.inside_root(
      self.image_root, image, file=self.path, record=where, fix=_ROOT_FIX
    )
    return records.ImageRef(path=str(image_path))

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> records.Record:
    return self._records[index]

  def __repr__(self) -> str:
    return f"MrpoJsonSource({self.path}, {len(self)} records)"


@dataclasses.dataclass(frozen=True)
class _Entry:
  target: Callable[..., Any] | str  # callable or "module:attribute"
  takes_path: bool


_REGISTRY: dict[str, _Entry] = {}


def register_source(
  name: str, target: Callable[..., Any] | str, *, takes_path: bool = True
) -> None:
  """Registers a source factory under a `data.dataset` name.

  Args:
    name: the `data.dataset` value.
    target: a callable, or "package.module:Attribute" imported on first use
      (so a registry entry costs nothing until used and may name a module
      that is still being written).
    takes_path: whether the factory's first argument is `data.path`;
      generated sources (SynthMed) take only keyword arguments.
  """
  _REGISTRY[name] = _Entry(target, takes_path)


def source_names() -> list[str]:
  return sorted(_REGISTRY)


def _resolve(name: str, entry: _Entry) -> Callable[..., Any]:
  if callable(entry.target):
    return entry.target
  module_name, _, attr = entry.target.partition(":")
  try:
    module = importlib.import_module(module_name)
    return getattr(module, attr)
  except (ImportError, AttributeError) as e:
    raise InputError(
      f"data.dataset={name!r} needs {entry.target}, which cannot be loaded: {e}"
    ) from e


def make_source(name: str, path: str = "", **kwargs: Any) -> Any:
  """Builds the source registered as `name` (`data.dataset`).

  `path` is `data.path` (a file or directory, local or gs://); it must be
  empty for generated sources. Extra keyword arguments go to the factory
  (e.g. on_bad_record, or SynthMed's num_records, seed, image_size).
  """
  if name not in _REGISTRY:
    raise InputError(
      f"data.dataset={name!r} is not a known source; known: {source_names()}"
    )
  entry = _REGISTRY[name]
  if entry.takes_path and not path:
    raise InputError(f"data.dataset={name!r} needs data.path to be set")
  if not entry.takes_path and path:
    raise InputError(
      f"data.dataset={name!r} generates its data; leave data.path empty "
      f"(got {path!r})"
    )
  factory = _resolve(name, entry)
  return factory(path, **kwargs) if entry.takes_path else factory(**kwargs)


def _in_memory(*, records: Sequence, **kwargs: Any) -> InMemorySource:  # noqa: F811
  return InMemorySource(records, **kwargs)


register_source("mrpo_json", MrpoJsonSource)
register_source("in_memory", _in_memory, takes_path=False)
register_source(
  "synthmed", "stepjax.data.synthmed:SynthMedSource", takes_path=False
)
# Readers of the medical VQA datasets as their sources ship them
# (stepjax/data/readers/; docs/datasets.md says where to put the files).
for _name, _target in (
  ("vqa_rad", "stepjax.data.readers.vqa_rad:open_source"),
  ("slake", "stepjax.data.readers.slake:SlakeSource"),
  ("pathvqa", "stepjax.data.readers.pathvqa:PathVqaSource"),
  ("pmc_vqa", "stepjax.data.readers.ood:PmcVqaSource"),
  ("vqa_med_2019", "stepjax.data.readers.ood:VqaMed2019Source"),
  ("quilt_vqa", "stepjax.data.readers.ood:QuiltVqaSource"),
  ("mimic_cxr_vqa", "stepjax.data.readers.mimic_cxr_vqa:MimicCxrVqaSource"),
  ("vqa_rad_tfds", "stepjax.data.readers.tfds_builders:vqa_rad_source"),
  ("slake_tfds", "stepjax.data.readers.tfds_builders:slake_source"),
  ("pathvqa_tfds", "stepjax.data.readers.tfds_builders:pathvqa_source"),
):
  register_source(_name, _target)
