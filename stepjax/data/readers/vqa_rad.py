"""VQA-RAD: the original release (json + image folder) or its parquet copy.

Original release: `VQA_RAD Dataset Public.json` (a list of dicts with
`qid`, `image_name`, `question`, `answer` (sometimes a number),
`answer_type`, `question_type`, `phrase_type`, `image_organ`) next to the
folder `VQA_RAD Image Folder/` of `synpicNNNN.jpg`. The test split is the
rows whose `phrase_type` starts with "test"; the rest is train.

Hugging Face copy: `data/{train,test}-*.parquet` with `image` {bytes, path},
`question`, `answer`. `open_source` picks the layout it finds.
"""

from __future__ import annotations

import posixpath

from etils import epath

from stepjax.data.readers import base, parquet, paths

JSON_NAMES = ("VQA_RAD Dataset Public.json", "VQA_RAD_Dataset_Public.json")
IMAGE_DIRS = ("VQA_RAD Image Folder", "VQA_RAD_Image_Folder", "images")
SPLITS = ("train", "test")


def _split_of(phrase_type: str) -> str:
  return "test" if phrase_type.lower().startswith("test") else "train"


class VqaRadJsonSource(base.RecordSource):
  """One split of the original VQA-RAD release.

  path: the release directory, or the json file itself (images are then
    looked up next to it). Ids are `vqa_rad/{split}/{qid}`.
  """

  dataset = "vqa_rad"

  def __init__(
    self,
    path: epath.PathLike,
    *,
    split: str = "train",
    image_dir: epath.PathLike | None = None,
    on_bad_record: base.OnBadRecord = "fail",
    check_images: bool = False,
  ):
    super().__init__(on_bad_record=on_bad_record)
    self.split = base.checked_split("VQA-RAD", split, SPLITS)
    root = paths.as_path(path)
    if root.suffix == ".json":
      self.json_path, root = root, root.parent
    else:
      self.json_path = paths.first_existing(root, JSON_NAMES)
    if image_dir is not None:
      self.image_dir = paths.as_path(image_dir)
    else:
      found = [root / d for d in IMAGE_DIRS if (root / d).exists()]
      self.image_dir = found[0] if found else root
    file = str(self.json_path)
    items = paths.read_json_list(self.json_path)
    for i, item in enumerate(items):
      row = self._policy.guard(lambda i=i, item=item: self._row(file, i, item))
      if row is not None:
        self._rows.append(row)
    self._finish(check_images)

  def _row(self, file: str, i: int, item) -> base.Row | None:
    """The row of item `i`, or None when it belongs to the other split.

    Once the split is known, only this split's items are checked further,
    so a bad item is reported (and counted as skipped) by one split only.
    """
    where = f"[{i}]"
    qid = base.text_field(item, "qid", file=file, record=where)
    phrase_type = base.text_field(
      item, "phrase_type", file=file, record=f"qid {qid}"
    )
    split = _split_of(phrase_type)
    if split != self.split:
      return None
    record_id = f"vqa_rad/{split}/{qid}"
    image_name = base.text_field(
      item, "image_name", file=file, record=record_id
    )
    meta = {
      "split": split,
      "qid": qid,
      "image_name": image_name,
      "image_key": posixpath.basename(image_name),
    }
    for name in ("image_organ", "answer_type", "question_type", "phrase_type"):
      if item.get(name) is not None:
        meta[name] = str(item[name]).strip()
    return base.Row(
      id=record_id,
      question=base.text_field(item, "question", file=file, record=record_id),
      answer=base.text_field(item, "answer", file=file, record=record_id),
      dataset=self.dataset,
      file=file,
      origin=f"{file}{where}",
      meta=meta,
      image=self.image_ref(image_name, file=file, record=record_id),
    )


class VqaRadParquetSource(parquet.ParquetVqaSource):
  """One split of the Hugging Face VQA-RAD copy (images as bytes).

  Ids are `vqa_rad/{split}/{row}`. MedThink alignment uses the stored image
  path's basename, so it needs a copy whose `image.path` keeps the
  `synpicNNNN.jpg` names.
  """

  dataset = "vqa_rad"
  splits = SPLITS


def open_source(
  path: epath.PathLike, **kwargs
) -> VqaRadJsonSource | VqaRadParquetSource:
  """VQA-RAD from either layout: the json release, else parquet shards.

  kwargs go to the chosen class (split, on_bad_record, check_images, and
  image_dir for the json release).
  """
  root = paths.as_path(path)
  is_json = root.suffix == ".json" or any(
    (root / n).exists() for n in JSON_NAMES
  )
  if is_json:
    return VqaRadJsonSource(root, **kwargs)
  kwargs.pop("image_dir", None)
  return VqaRadParquetSource(root, **kwargs)
