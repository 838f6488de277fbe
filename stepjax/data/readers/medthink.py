"""MedThink gold rationales, aligned to VQA records.

A MedThink file (R-RAD `open-end/trainset.json`, R-SLAKE `open-end/
train.json`, R-PathVQA alike) is a dict keyed by problem id; each item has
`question`, `choices`, `answer` (text, or an integer index into `choices`)
and `solution` (the rationale). The image is `image` ("synpicX.jpg") for
RAD and PathVQA, `img_name` ("xmlabN/source.jpg") plus `img_id` for SLAKE.

Alignment key: (image key, question, answer), each normalised (whitespace
collapsed, lower-cased, no space before punctuation). The image key is
"xmlabN_source.jpg" for SLAKE and the basename elsewhere; readers put the
record's key in `meta["image_key"]`.
"""

from __future__ import annotations

import dataclasses
import operator
import posixpath
import re
from collections.abc import Sequence
from typing import Any

from etils import epath

from stepjax.data import errors, records
from stepjax.data.readers import base, paths, slake
from stepjax.errors import MissingInputError

# dataset -> (folder names, train file names, test file names)
LAYOUT = {
  "vqa_rad": (
    ("R-RAD", "R_RAD", "RAD", "vqa_rad"),
    ("trainset.json", "train.json"),
    ("testset.json", "test.json"),
  ),
  "slake": (
    ("R-SLAKE", "R_SLAKE", "SLAKE", "slake"),
    ("train.json", "trainset.json"),
    ("test.json", "testset.json"),
  ),
  "pathvqa": (
    ("R-PathVQA", "R-PATH", "R-Path", "PathVQA", "pathvqa"),
    ("train.json", "trainset.json"),
    ("test.json", "testset.json"),
  ),
}


def normalize(text: str) -> str:
  """Whitespace collapsed, lower-cased, no space before punctuation."""
  text = " ".join(str(text).split()).lower()
  return re.sub(r"\s+(?=[^\w\s])", "", text)


def key(image_key: str, question: str, answer: str) -> tuple[str, str, str]:
  """The alignment key of a (record or rationale) triple."""
  return (normalize(image_key), normalize(question), normalize(answer))


def row_key(row: base.Row | records.Record) -> tuple[str, str, str]:
  """A reader row's alignment key (its meta["image_key"])."""
  return key(str(row.meta.get("image_key", "")), row.question, row.answer)


@dataclasses.dataclass(frozen=True)
class Rationale:
  """One MedThink item: its answer resolved to text."""

  id: str
  image_key: str
  question: str
  answer: str
  solution: str
  file: str

  @property
  def key(self) -> tuple[str, str, str]:
    return key(self.image_key, self.question, self.answer)


def find_file(root: epath.PathLike, dataset: str, split: str) -> epath.Path:
  """The open-ended MedThink file of `dataset` / `split` under `root`.

  `root` is the MedThink directory (holding R-RAD/, R-SLAKE/, R-PathVQA/),
  one dataset's folder, or the file itself.

  Raises:
    FileNotFoundError: naming every place looked at.
  """
  root = paths.as_path(root)
  if root.suffix == ".json":
    return root
  folders, train_names, test_names = LAYOUT[dataset]
  names = train_names if split == "train" else test_names
  tried = []
  for folder in ("", *folders):
    for sub in ("open-end", ""):
      for name in names:
        candidate = root / folder / sub / name if folder else root / sub / name
        tried.append(str(candidate))
        if candidate.exists():
          return candidate
  raise MissingInputError(
    f"{root}: no MedThink {split} file for {dataset} (looked for "
    f"{', '.join(tried[:4])}, ...); see docs/datasets.md"
  )


def _answer_text(item: dict, *, file: str, record: str) -> str:
  answer = item.get("answer")
  if isinstance(answer, int) and not isinstance(answer, bool):
    choices = item.get("choices")
    if not isinstance(choices, list):
      raise errors.BadRecordError(
        f"integer answer {answer} but `choices` is not a list",
        file=file,
        record=record,
      )
    if not 0 <= answer < len(choices):
      raise errors.BadRecordError(
        f"answer index {answer} out of range for {len(choices)} choices",
        file=file,
        record=record,
      )
    return base.text_field(
      {"answer": choices[answer]}, "answer", file=file, record=record
    )
  return base.text_field(item, "answer", file=file, record=record)


def _image_key(item: dict, dataset: str, *, file: str, record: str) -> str:
  names = ("img_name", "image") if dataset == "slake" else ("image", "img_name")
  for name in names:
    if item.get(name):
      value = base.text_field(item, name, file=file, record=record)
      if dataset == "slake":
        return slake.image_key(value)
      return posixpath.basename(value)
  raise errors.BadRecordError(
    f"missing image field (one of {list(names)})", file=file, record=record
  )


def load(
  path: epath.PathLike,
  *,
  dataset: str,
  on_bad_record: base.OnBadRecord = "fail",
) -> tuple[list[Rationale], list[tuple[str, str]]]:
  """Reads one MedThink file; returns (rationales, skipped).

  Duplicate problem ids (JSON keys repeated), missing fields, integer
  answers outside `choices` follow `on_bad_record`.
  """
  policy = base.BadRecordPolicy(on_bad_record)
  path = paths.as_path(path)
  file = str(path)
  repeated_keys: list[list[str]] = []  # per JSON object, innermost first

  def pairs(items: list[tuple[str, Any]]) -> dict:
    seen, repeated = {}, []
    for k, v in items:
      if k in seen:
        repeated.append(k)
      else:
        seen[k] = v
    repeated_keys.append(repeated)
    return seen

  data = paths.read_json(path, object_pairs_hook=pairs)
  # The top-level object is decoded last; its repeated keys are problem ids.
  duplicates = repeated_keys[-1] if repeated_keys else []
  if not isinstance(data, dict):
    raise errors.BadRecordError(
      f"expected a dict keyed by problem id, got {type(data).__name__}",
      file=file,
    )
  for problem_id in dict.fromkeys(duplicates):
    policy.handle(
      errors.BadRecordError(
        "duplicate problem id (the first is kept)",
        file=file,
        record=problem_id,
      )
    )

  def make(problem_id: str, item: Any) -> Rationale:
    if not isinstance(item, dict):
      raise errors.BadRecordError(
        f"expected an object, got {type(item).__name__}",
        file=file,
        record=problem_id,
      )
    return Rationale(
      id=problem_id,
      image_key=_image_key(item, dataset, file=file, record=problem_id),
      question=base.text_field(item, "question", file=file, record=problem_id),
      answer=_answer_text(item, file=file, record=problem_id),
      solution=base.text_field(item, "solution", file=file, record=problem_id),
      file=file,
    )

  rationales = []
  for problem_id, item in data.items():
    rationale = policy.guard(lambda p=problem_id, i=item: make(p, i))
    if rationale is not None:
      rationales.append(rationale)
  return rationales, policy.skipped


@dataclasses.dataclass
class Alignment:
  """Which rationales found their record.

  matched: (rationale, row) pairs in the rationale file's order.
  unmatched: rationales whose key is in no row.
  repeated: rationales whose key an earlier rationale already had (the
    first one wins).
  rows_without: how many rows got no rationale.
  """

  dataset: str
  split: str
  file: str
  matched: list[tuple[Rationale, base.Row]]
  unmatched: list[Rationale]
  repeated: list[Rationale]
  rows_without: int

  def summary(self) -> dict[str, Any]:
    return {
      "dataset": self.dataset,
      "split": self.split,
      "file": self.file,
      "rationales": len(self.matched)
      + len(self.unmatched)
      + len(self.repeated),
      "matched": len(self.matched),
      "unmatched": len(self.unmatched),
      "repeated": len(self.repeated),
      "rows_without_rationale": self.rows_without,
    }

  def report(self) -> dict[str, Any]:
    """summary() plus the unmatched and repeated items, for a report file."""

    def describe(r):
      return {
        "id": r.id,
        "image": r.image_key,
        "question": r.question,
        "answer": r.answer,
      }

    return {
      **self.summary(),
      "unmatched_items": [describe(r) for r in self.unmatched],
      "repeated_items": [describe(r) for r in self.repeated],
    }


def align(
  rows: Sequence[base.Row],
  rationales: Sequence[Rationale],
  *,
  dataset: str = "",
  split: str = "",
) -> Alignment:
  """Matches rationales to rows by key; a key maps to its first row."""
  by_key: dict[tuple[str, str, str], base.Row] = {}
  for row in rows:
    by_key.setdefault(row_key(row), row)
  matched, unmatched, repeated = [], [], []
  seen = set()
  for rationale in rationales:
    if rationale.key in seen:
      repeated.append(rationale)
    elif rationale.key in by_key:
      matched.append((rationale, by_key[rationale.key]))
    else:
      unmatched.append(rationale)
    seen.add(rationale.key)
  with_rationale = {row.id for _, row in matched}
  return Alignment(
    dataset=dataset,
    split=split,
    file=rationales[0].file if rationales else "",
    matched=matched,
    unmatched=unmatched,
    repeated=repeated,
    rows_without=sum(row.id not in with_rationale for row in rows),
  )


def write_report(alignments: Sequence[Alignment], path: epath.PathLike) -> None:
  """Writes every alignment's summary and unmatched items as JSON."""
  paths.write_json(paths.as_path(path), [a.report() for a in alignments])


class RationaleSource:
  """A reader whose records carry their MedThink rationale.

  medthink_path: the MedThink directory, a dataset's folder in it, or the
    rationale file of the source's split (see `find_file`).
  only_matched: keep only records that have one (MRPO's training rows).
  `alignment` says how many matched; `skipped` is the reader's plus the
  rationale file's.
  """

  def __init__(
    self,
    source: base.RecordSource,
    medthink_path: epath.PathLike,
    *,
    only_matched: bool = False,
  ):
    self._source = source
    split = getattr(source, "split", "")
    rationales, skipped = load(
      find_file(medthink_path, source.dataset, split),
      dataset=source.dataset,
      on_bad_record=source.on_bad_record,
    )
    self.alignment = align(
      source.rows, rationales, dataset=source.dataset, split=split
    )
    self.skipped = [*source.skipped, *skipped]
    self._solution = {row.id: r.solution for r, row in self.alignment.matched}
    self._indices = [
      i
      for i, row in enumerate(source.rows)
      if not only_matched or row.id in self._solution
    ]

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index) -> records.Record:
    record = self._source[self._indices[operator.index(index)]]
    return dataclasses.replace(
      record, rationale=self._solution.get(record.id, "")
    )

  def __repr__(self) -> str:
    return (
      f"RationaleSource({self._source!r}, {len(self)} records, "
      f"{len(self.alignment.matched)} with a rationale)"
    )
