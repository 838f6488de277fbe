"""MIMIC-CXR-VQA (Bae et al., EHRXQA): split json files + MIMIC-CXR-JPG images.

The dataset is built by the authors' script (github.com/baeseongsu/
mimic-cxr-vqa, `dataset_builder/generate_answer.py`) from credentialed
PhysioNet data, so nobody downloads it ready-made: users hold

  MIMIC-CXR-VQA/
    dataset/train.json valid.json test.json    (or the files in this folder)
    files/p10/p10000032/s50414267/<dicom_id>.jpg   (MIMIC-CXR-JPG `files/`)

Each json is a list of questions with `split`, `idx`, `image_id`,
`question`, `content_type` (anatomy | attribute | presence | abnormality |
plane | gender | size), `semantic_type` (verify | choose | query),
`template`, `template_program`, `template_arguments`, and the fields the
script adds: `answer` (a list of lower-cased strings: ["yes"], ["left lung",
"right lung"], or [] when the answer set is empty), `subject_id`, `study_id`
and `image_path` ("pXX/pSUBJECT/sSTUDY/<image_id>.jpg", relative to
MIMIC-CXR-JPG's `files/` folder).

The reference answer is the list joined with ", " in its order; an empty
list becomes "none" (the question asks for a set and the set is empty).
Every element is in `meta["answers"]`. A plain string answer (the README of
the release calls it "an answer string") is read as is. Closed questions
are the `verify` ones, as in the authors' baselines
(`meta["answer_type"]`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from etils import epath

from stepjax.data import errors, records
from stepjax.data.readers import base, paths

SPLITS = ("train", "valid", "test")
_ALIASES = {"validation": "valid", "val": "valid"}
EMPTY_ANSWER = "none"
_META_FIELDS = (
  "image_id",
  "subject_id",
  "study_id",
  "content_type",
  "semantic_type",
  "template",
  "template_program",
  "template_arguments",
)


def answer_text(value: Any, *, file: str, record: str) -> tuple[str, list[str]]:
  """(reference answer, all answers) of an `answer` field (module docstring).

  Raises:
    errors.BadRecordError: the field is missing, null, or a list holding
      something other than non-empty text.
  """
  if isinstance(value, (list, tuple)):
    answers = []
    for k, item in enumerate(value):
      text = records.text_value(
        item, f"answer[{k}]", file=file, record=record
      ).strip()
      if not text:
        raise errors.BadRecordError(
          f"field 'answer' holds an empty string at [{k}]",
          file=file,
          record=record,
        )
      answers.append(text)
    return (", ".join(answers) if answers else EMPTY_ANSWER), answers
  text = base.text_field({"answer": value}, "answer", file=file, record=record)
  return text, [text]


def _split(split: str) -> str:
  return base.checked_split("MIMIC-CXR-VQA", _ALIASES.get(split, split), SPLITS)


def _image_dir(json_path: epath.Path) -> epath.Path:
  """MIMIC-CXR-JPG's `files/` next to the json, or next to its `dataset/`."""
  folder = json_path.parent
  candidates = [folder / "files"]
  if folder.name == "dataset":
    candidates.append(folder.parent / "files")
  for candidate in candidates:
    if candidate.exists():
      return candidate
  return candidates[-1]


class MimicCxrVqaSource(base.RecordSource):
  """One split of MIMIC-CXR-VQA. Ids are `mimic_cxr_vqa/{split}/{idx}`.

  path: the folder holding `{split}.json` (or `dataset/{split}.json`).
  image_dir: MIMIC-CXR-JPG's `files/` folder; default `files/` next to the
    json (or next to its `dataset/` folder). Every `image_path` must
    resolve under it (`paths.inside_root`), symlinks and `..` included.
  """

  dataset = "mimic_cxr_vqa"

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
    self.split = _split(split)
    root = paths.as_path(path)
    names = [f"{self.split}.json", f"dataset/{self.split}.json"]
    self.json_path = paths.first_existing(root, names)
    if image_dir:
      self.image_dir = paths.as_path(image_dir)
    else:
      self.image_dir = _image_dir(self.json_path)
    file = str(self.json_path)
    items = paths.read_json_list(self.json_path)
    for i, item in enumerate(items):
      row = self._policy.guard(lambda i=i, item=item: self._row(file, i, item))
      if row is not None:
        self._rows.append(row)
    self._finish(check_images)

  def _row(self, file: str, i: int, item: Any) -> base.Row:
    where = f"[{i}]"
    if not isinstance(item, Mapping):
      raise errors.BadRecordError(
        f"expected an object, got {type(item).__name__}",
        file=file,
        record=where,
      )
    idx = i
    if item.get("idx") is not None:
      idx = base.text_field(item, "idx", file=file, record=where)
    record_id = f"{self.dataset}/{self.split}/{idx}"
    if "answer" not in item:
      raise errors.BadRecordError(
        "missing field 'answer' (the public `_test.json` files have none: "
        "run the release's build_dataset.sh to write test.json)",
        file=file,
        record=record_id,
      )
    answer, answers = answer_text(item["answer"], file=file, record=record_id)
    image = base.text_field(item, "image_path", file=file, record=record_id)
    meta = {
      "split": self.split,
      "idx": idx,
      "image_key": image,
      "answers": answers,
      "answer_type": (
        "CLOSED" if item.get("semantic_type") == "verify" else "OPEN"
      ),
    }
    for name in _META_FIELDS:
      if item.get(name) is not None:
        meta[name] = item[name]
    return base.Row(
      id=record_id,
      question=base.text_field(item, "question", file=file, record=record_id),
      answer=answer,
      dataset=self.dataset,
      file=file,
      origin=f"{file}[{i}]",
      meta=meta,
      image=self.image_ref(image, file=file, record=record_id),
    )
