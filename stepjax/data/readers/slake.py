"""SLAKE: `train.json`, `validation.json`, `test.json` and `imgs/`.

Each json is a list of questions with `qid`, `img_id`, `img_name`
("xmlab1/source.jpg", relative to `imgs/`), `question`, `answer`, `q_lang`
("en" or "zh"), `location`, `modality`, `answer_type`, `base_type`,
`content_type`, `triple`. Questions come in English and Chinese; the
reader keeps one language (English by default, as MRPO does).
"""

from __future__ import annotations

from etils import epath

from stepjax.data.readers import base, paths

SPLITS = ("train", "validation", "test")
_META_FIELDS = (
  "img_id",
  "location",
  "modality",
  "answer_type",
  "base_type",
  "content_type",
  "triple",
)


def image_key(img_name: str) -> str:
  """The MedThink image key: "xmlab1/source.jpg" -> "xmlab1_source.jpg"."""
  return img_name.strip().strip("/").replace("/", "_")


class SlakeSource(base.RecordSource):
  """One split of SLAKE in one language (q_lang="en" | "zh" | None = both).

  Ids are `slake/{split}/{qid}`; images are `imgs/{img_name}` paths.
  """

  dataset = "slake"

  def __init__(
    self,
    path: epath.PathLike,
    *,
    split: str = "train",
    q_lang: str | None = "en",
    image_dir: epath.PathLike | None = None,
    on_bad_record: base.OnBadRecord = "fail",
    check_images: bool = False,
  ):
    super().__init__(on_bad_record=on_bad_record)
    self.split = base.checked_split("SLAKE", split, SPLITS)
    self.q_lang = q_lang
    root = paths.as_path(path)
    self.json_path = paths.first_existing(root, [f"{split}.json"])
    self.image_dir = paths.as_path(image_dir) if image_dir else root / "imgs"
    file = str(self.json_path)
    items = paths.read_json_list(self.json_path)
    for i, item in enumerate(items):
      row = self._policy.guard(lambda i=i, item=item: self._row(file, i, item))
      if row is not None and (q_lang is None or row.meta["q_lang"] == q_lang):
        self._rows.append(row)
    self._finish(check_images)

  def _row(self, file: str, i: int, item) -> base.Row:
    qid = base.text_field(item, "qid", file=file, record=f"[{i}]")
    record_id = f"slake/{self.split}/{qid}"
    img_name = base.text_field(item, "img_name", file=file, record=record_id)
    meta = {
      "split": self.split,
      "qid": qid,
      "q_lang": base.text_field(item, "q_lang", file=file, record=record_id),
      "img_name": img_name,
      "image_key": image_key(img_name),
    }
    for name in _META_FIELDS:
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
      image=self.image_ref(img_name, file=file, record=record_id),
    )
