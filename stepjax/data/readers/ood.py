"""Out-of-distribution test sets: PMC-VQA, VQA-Med 2019, Quilt-VQA.

- PMC-VQA: `train.csv`, `test.csv`, `test_clean.csv` with `Figure_path`,
  `Question`, `Answer`, `Choice A`..`Choice D`, `Answer_label`; images in
  `images/`.
- VQA-Med 2019: pipe files `imageid|category|question|answer` (training
  files `imageid|question|answer`), alternatives separated by `#`; images
  `<imageid>.jpg` in a folder whose name contains "image".
- Quilt-VQA: one json list or jsonl file of `image`, `question`, `answer`,
  `answer_type`, `context`; images in `images/`.
"""

from __future__ import annotations

import csv
import io
import json

from etils import epath

from stepjax.data import errors
from stepjax.data.readers import base, paths
from stepjax.errors import MissingInputError

PMC_VQA_SPLITS = ("train", "test", "test_clean")
VQA_MED_SPLITS = {"train": "train", "validation": "val", "test": "test"}


class PmcVqaSource(base.RecordSource):
  """PMC-VQA, one csv split. Ids are `pmc_vqa/{split}/{row}`.

  The answer is the `Answer` text; the choices and `Answer_label` go to meta
  for multiple-choice evaluation.
  """

  dataset = "pmc_vqa"

  def __init__(
    self,
    path: epath.PathLike,
    *,
    split: str = "test_clean",
    image_dir: epath.PathLike | None = None,
    on_bad_record: base.OnBadRecord = "fail",
    check_images: bool = False,
  ):
    super().__init__(on_bad_record=on_bad_record)
    self.split = base.checked_split("PMC-VQA", split, PMC_VQA_SPLITS)
    root = paths.as_path(path)
    csv_path = paths.first_existing(root, [f"{split}.csv"])
    self.image_dir = paths.as_path(image_dir) if image_dir else root / "images"
    file = str(csv_path)
    reader = csv.DictReader(io.StringIO(csv_path.read_text(encoding="utf-8")))
    missing = {"Figure_path", "Question", "Answer"} - set(
      reader.fieldnames or []
    )
    if missing:
      raise errors.BadRecordError(
        f"missing columns {sorted(missing)}; header is {reader.fieldnames}",
        file=file,
      )
    for i, item in enumerate(reader):
      row = self._policy.guard(lambda i=i, item=item: self._row(file, i, item))
      if row is not None:
        self._rows.append(row)
    self._finish(check_images)

  def _row(self, file: str, i: int, item: dict) -> base.Row:
    record_id = f"pmc_vqa/{self.split}/{i}"
    figure = base.text_field(item, "Figure_path", file=file, record=record_id)
    choices = [
      (item.get(f"Choice {c}") or "").strip() for c in ("A", "B", "C", "D")
    ]
    return base.Row(
      id=record_id,
      question=base.text_field(item, "Question", file=file, record=record_id),
      answer=base.text_field(item, "Answer", file=file, record=record_id),
      dataset=self.dataset,
      file=file,
      origin=f"{file}:{i + 2}",  # line number, after the header
      meta={
        "split": self.split,
        "figure_path": figure,
        "image_key": figure,
        "choices": choices,
        "answer_label": (item.get("Answer_label") or "").strip(),
      },
      image=self.image_ref(figure, file=file, record=record_id),
    )


def _pick(candidates: list[epath.Path], what: str, root) -> epath.Path:
  if len(candidates) != 1:
    raise MissingInputError(
      f"{root}: expected one {what}, found "
      f"{[c.name for c in candidates] or 'none'}; pass the file itself"
    )
  return candidates[0]


def _vqa_med_file(root: epath.Path, split: str) -> epath.Path:
  if root.suffix == ".txt":
    return root
  token = VQA_MED_SPLITS[split]
  files = [
    f for f in paths.glob_sorted(root, "*.txt") if token in f.name.lower()
  ]
  # A training folder also holds per-category files: prefer the union.
  preferred = [
    f
    for f in files
    if "all_qa_pairs" in f.name.lower() or "ref_answers" in f.name.lower()
  ]
  return _pick(preferred or files, f"{split} question file", root)


def _vqa_med_images(root: epath.Path, split: str) -> epath.Path:
  folders = [
    d for d in root.iterdir() if d.is_dir() and "image" in d.name.lower()
  ]
  token = VQA_MED_SPLITS[split]
  for_split = [d for d in folders if token in d.name.lower()]
  if len(for_split) == 1:
    return for_split[0]
  return folders[0] if len(folders) == 1 else root


class VqaMed2019Source(base.RecordSource):
  """VQA-Med 2019, one split. Ids are `vqa_med_2019/{split}/{line}`.

  path: the folder holding the pipe file and image folder, or the pipe file
  itself (pass image_dir then). The answer is the first `#` alternative;
  meta["answers"] lists them all.
  """

  dataset = "vqa_med_2019"

  def __init__(
    self,
    path: epath.PathLike,
    *,
    split: str = "test",
    image_dir: epath.PathLike | None = None,
    on_bad_record: base.OnBadRecord = "fail",
    check_images: bool = False,
  ):
    super().__init__(on_bad_record=on_bad_record)
    self.split = base.checked_split("VQA-Med", split, VQA_MED_SPLITS)
    root = paths.as_path(path)
    text_path = _vqa_med_file(root, split)
    if image_dir is not None:
      self.image_dir = paths.as_path(image_dir)
    else:
      self.image_dir = _vqa_med_images(text_path.parent, split)
    file = str(text_path)
    lines = text_path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, start=1):
      if line.strip():
        row = self._policy.guard(
          lambda n=n, line=line: self._row(file, n, line)
        )
        if row is not None:
          self._rows.append(row)
    self._finish(check_images)

  def _row(self, file: str, n: int, line: str) -> base.Row:
    record_id = f"vqa_med_2019/{self.split}/{n}"
    fields = line.rstrip("\r\n").split("|")
    if len(fields) == 3:
      image_id, question, answer = fields
      category = ""
    elif len(fields) == 4:
      image_id, category, question, answer = fields
    else:
      raise errors.BadRecordError(
        f"expected imageid|category|question|answer, got {len(fields)} fields",
        file=file,
        record=f"line {n}",
      )
    item = {"image_id": image_id, "question": question}
    answers = [a.strip() for a in answer.split("#") if a.strip()]
    item["answer"] = answers[0] if answers else ""
    image_id = base.text_field(item, "image_id", file=file, record=record_id)
    return base.Row(
      id=record_id,
      question=base.text_field(item, "question", file=file, record=record_id),
      answer=base.text_field(item, "answer", file=file, record=record_id),
      dataset=self.dataset,
      file=file,
      origin=f"{file}:{n}",
      meta={
        "split": self.split,
        "image_id": image_id,
        "image_key": f"{image_id}.jpg",
        "category": category.strip(),
        "answers": answers,
      },
      image=self.image_ref(f"{image_id}.jpg", file=file, record=record_id),
    )


class QuiltVqaSource(base.RecordSource):
  """Quilt-VQA (one split). Ids are `quilt_vqa/{row}`.

  path: the folder (one `.jsonl` or `.json` file and `images/`) or the file.
  """

  dataset = "quilt_vqa"

  def __init__(
    self,
    path: epath.PathLike,
    *,
    split: str = "test",
    image_dir: epath.PathLike | None = None,
    on_bad_record: base.OnBadRecord = "fail",
    check_images: bool = False,
  ):
    super().__init__(on_bad_record=on_bad_record)
    self.split = split
    root = paths.as_path(path)
    if root.suffix in (".json", ".jsonl"):
      data_path, root = root, root.parent
    else:
      data_path = _pick(
        paths.glob_sorted(root, "*.jsonl") or paths.glob_sorted(root, "*.json"),
        "json or jsonl file",
        root,
      )
    if image_dir is not None:
      self.image_dir = paths.as_path(image_dir)
    else:
      self.image_dir = root / "images" if (root / "images").exists() else root
    file = str(data_path)
    if data_path.suffix == ".jsonl":
      items = []
      for n, line in enumerate(data_path.read_text("utf-8").splitlines(), 1):
        if line.strip():
          items.append(
            self._policy.guard(lambda n=n, s=line: _json(file, n, s))
          )
    else:
      items = paths.read_json_list(data_path)
    for i, item in enumerate(items):
      if item is None:
        continue  # a bad jsonl line, already skipped
      row = self._policy.guard(lambda i=i, item=item: self._row(file, i, item))
      if row is not None:
        self._rows.append(row)
    self._finish(check_images)

  def _row(self, file: str, i: int, item) -> base.Row:
    record_id = f"quilt_vqa/{i}"
    image = base.text_field(item, "image", file=file, record=record_id)
    meta = {"split": self.split, "image_key": image}
    for name in ("answer_type", "context"):
      if item.get(name) is not None:
        meta[name] = item[name]
    return base.Row(
      id=record_id,
      question=base.text_field(item, "question", file=file, record=record_id),
      answer=base.text_field(item, "answer", file=file, record=record_id),
      dataset=self.dataset,
      file=file,
      origin=f"{file}[{i}]",
      meta=meta,
      image=self.image_ref(image, file=file, record=record_id),
    )


def _json(file: str, n: int, line: str):
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:
    raise errors.BadRecordError(
      f"not valid JSON: {e.msg}", file=file, record=f"line {n}"
    ) from e
