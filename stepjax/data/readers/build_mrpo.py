"""MRPO's training and test sets from VQA-RAD, SLAKE, PathVQA and MedThink.

Selection (as in the paper and its code):
- train: the MedThink open-ended train items whose (image, question,
  answer) key is found in the raw train split, yes/no answers dropped,
  each with its MedThink rationale;
- test: the raw test splits, yes/no answers dropped, with the MedThink test
  rationale where one matches ("" otherwise);
- SLAKE English questions only.

Output directory (`out`):
  train.json, test.json  MRPO json: [{"image", "problem", "solution", "id",
                         "rationale"}], image paths relative to `out`;
  rationales.json        {record id: rationale} for every record with one;
  counts.json            per-dataset counts (also returned and printed);
  alignment.json         MedThink alignment summaries + unmatched items;
  skipped.json           [where, reason] of every record dropped (skip mode);
  images/<dataset>/...   the images.

Images are copied into `out/images` by default, so the directory is
self-contained and can be copied to a bucket in one go. PathVQA (and the
VQA-RAD parquet copy) store images as bytes: they are written as
`<sha1 prefix>.<ext>`, which keeps train and test `img_1.jpg` apart and
writes a shared image once. `images="reference"` instead points at the
source files (relative paths when both are local); bytes are still written.

Paths follow the one path policy (`paths.inside_root`): an image a record
names is read only if it resolves (symlinks, `..` and absolute paths
included) inside its reader's image folder, and every file is written only
if it resolves inside `out`; otherwise `PathOutsideRootError` names the
record, and `on_bad_record="skip"` drops and counts it.
"""

from __future__ import annotations

import collections
import posixpath
from collections.abc import Mapping
from typing import Any

from etils import epath

from stepjax.data import errors
from stepjax.data.readers import (
  base,
  medthink,
  paths,
  pathvqa,
  slake,
  vqa_rad,
)
from stepjax.errors import InputError, MissingInputError

DATASETS = ("vqa_rad", "slake", "pathvqa")
IMAGE_MODES = ("copy", "reference")


def open_split(
  dataset: str,
  path: epath.PathLike,
  split: str,
  *,
  on_bad_record: base.OnBadRecord = "fail",
  check_images: bool = False,
) -> base.RecordSource:
  """The reader MRPO uses for one split of one dataset (SLAKE: English)."""
  kwargs = {
    "split": split,
    "on_bad_record": on_bad_record,
    "check_images": check_images,
  }
  if dataset == "vqa_rad":
    return vqa_rad.open_source(path, **kwargs)
  if dataset == "slake":
    return slake.SlakeSource(path, q_lang="en", **kwargs)
  if dataset == "pathvqa":
    return pathvqa.PathVqaSource(path, **kwargs)
  raise InputError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")


class _ImageWriter:
  """Places each record's image under out/images and returns its path."""

  def __init__(self, out: epath.Path, mode: str):
    if mode not in IMAGE_MODES:
      raise InputError(f"images must be one of {IMAGE_MODES}, got {mode!r}")
    self.out = out
    self.mode = mode
    self._placed: dict[str, str] = {}  # source path or content -> relative
    self._taken: set[str] = set()

  def place(self, source: base.RecordSource, row: base.Row) -> str:
    if row.image is not None and row.image.path is not None:
      return self._place_file(source, row)
    data = source.row_image(row).data
    name = paths.content_name(data, paths.image_suffix(data))
    return self._write(f"images/{row.dataset}/{name}", data, key=name, row=row)

  def _place_file(self, source: base.RecordSource, row: base.Row) -> str:
    # The reader checked the path; check again right before reading, in
    # case the tree changed since (the path policy, paths.inside_root).
    src_path = paths.inside_root(
      source.image_dir, row.image.path, file=row.file, record=row.id
    )
    src = str(src_path)
    if src in self._placed:
      return self._placed[src]
    if self.mode == "reference":
      self._placed[src] = paths.relative_to_dir(src, self.out)
      return self._placed[src]
    if not src_path.exists():
      raise errors.BadRecordError(
        f"image {src} does not exist", file=row.file, record=row.id
      )
    try:
      data = src_path.read_bytes()
    except OSError as e:
      raise errors.BadRecordError(
        f"cannot read image {src}: {e}", file=row.file, record=row.id
      ) from None
    name = posixpath.basename(str(row.meta.get("image_key") or ""))
    if name in ("", ".", ".."):
      name = src_path.name
    relative = f"images/{row.dataset}/{name}"
    if relative in self._taken:  # another source file with the same name
      stem, suffix = posixpath.splitext(name)
      unique = paths.content_name(src.encode(), suffix)
      relative = f"images/{row.dataset}/{stem}_{unique}"
    self._placed[src] = self._write(relative, data, key=src, row=row)
    return self._placed[src]

  def _write(
    self, relative: str, data: bytes, *, key: str, row: base.Row
  ) -> str:
    if key not in self._placed:
      # Never write outside `out`, even through a symlinked folder in it.
      target = paths.inside_root(
        self.out, relative, file=row.file, record=row.id, what="output path"
      )
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(data)
      self._taken.add(relative)
      self._placed[key] = relative
    return self._placed[key]


def _entry(row: base.Row, image: str, rationale: str) -> dict[str, str]:
  return {
    "image": image,
    "problem": row.question,
    "solution": row.answer,
    "id": row.id,
    "rationale": rationale,
  }


def _rationales(medthink_dir, dataset, split, policy, required):
  """Loads one MedThink file; a missing test file is allowed."""
  try:
    file = medthink.find_file(medthink_dir, dataset, split)
  except FileNotFoundError:
    if required:
      raise
    return []
  rationales, skipped = medthink.load(
    file, dataset=dataset, on_bad_record=policy.on_bad_record
  )
  policy.skipped.extend(skipped)
  return rationales


def build(
  out: epath.PathLike,
  *,
  medthink_dir: epath.PathLike,
  datasets: Mapping[str, epath.PathLike | None],
  images: str = "copy",
  on_bad_record: base.OnBadRecord = "fail",
  check_images: bool = False,
) -> dict[str, Any]:
  """Writes MRPO's train/test files under `out`; returns the counts.

  datasets: {"vqa_rad": dir, "slake": dir, "pathvqa": dir}; a dataset given
    as None (or left out) is not built.
  """
  inputs = {f"--{name}": path for name, path in datasets.items() if path}
  for flag, path in {**inputs, "--medthink": medthink_dir}.items():
    if not paths.as_path(path).exists():
      raise MissingInputError(f"{flag}={path}: no such directory")
  out = paths.as_path(out)
  out.mkdir(parents=True, exist_ok=True)
  policy = base.BadRecordPolicy(on_bad_record)
  writer = _ImageWriter(out, images)
  entries = {"train": [], "test": []}
  counts: dict[str, Any] = {}
  reports = []
  for dataset in DATASETS:
    if datasets.get(dataset) is None:
      continue
    counts[dataset] = {}
    for split in ("train", "test"):
      source = open_split(
        dataset,
        datasets[dataset],
        split,
        on_bad_record=on_bad_record,
        check_images=check_images,
      )
      policy.skipped.extend(source.skipped)
      found = _rationales(
        medthink_dir, dataset, split, policy, split == "train"
      )
      alignment = medthink.align(
        source.rows, found, dataset=dataset, split=split
      )
      reports.append(alignment)
      solutions = {row.id: r.solution for r, row in alignment.matched}
      if split == "train":  # MedThink rows, in MedThink order
        candidates = [row for _, row in alignment.matched]
      else:
        candidates = source.rows
      tally = collections.Counter()
      for row in candidates:
        if base.is_yes_no(row.answer):
          tally["yes_no_dropped"] += 1
          continue
        image = policy.guard(lambda r=row, s=source: writer.place(s, r))
        if image is None:
          tally["image_errors"] += 1
          continue
        rationale = solutions.get(row.id, "")
        tally["with_rationale"] += bool(rationale)
        tally["kept"] += 1
        entries[split].append(_entry(row, image, rationale))
      counts[dataset][split] = {
        "raw": len(source),
        "rationales": len(found),
        "matched": len(alignment.matched),
        "unmatched_rationales": len(alignment.unmatched),
        "yes_no_dropped": tally["yes_no_dropped"],
        "image_errors": tally["image_errors"],
        "reader_skipped": len(source.skipped),
        "kept": tally["kept"],
        "with_rationale": tally["with_rationale"],
      }
  counts["total"] = {split: len(entries[split]) for split in entries}
  counts["skipped"] = len(policy.skipped)
  for split, rows in entries.items():
    paths.write_json(_output(out, f"{split}.json"), rows)
  paths.write_json(
    _output(out, "rationales.json"),
    {
      e["id"]: e["rationale"]
      for s in entries
      for e in entries[s]
      if e["rationale"]
    },
  )
  paths.write_json(_output(out, "counts.json"), counts)
  medthink.write_report(reports, _output(out, "alignment.json"))
  skipped = [list(s) for s in policy.skipped]
  paths.write_json(_output(out, "skipped.json"), skipped)
  return counts


def _output(out: epath.Path, name: str) -> epath.Path:
  """`out / name`, refused if it is a symlink leading out of `out`."""
  return paths.inside_root(out, name, file=str(out), what="output file")


def format_counts(counts: Mapping[str, Any]) -> str:
  """A small table of kept / raw / matched rows per dataset and split."""
  lines = [
    f"{'dataset':10s} {'split':6s} {'kept':>6s} {'raw':>6s} "
    f"{'matched':>8s} {'unmatched':>9s} {'yes/no':>7s}"
  ]
  for dataset in DATASETS:
    for split, c in counts.get(dataset, {}).items():
      lines.append(
        f"{dataset:10s} {split:6s} {c['kept']:6d} {c['raw']:6d} "
        f"{c['matched']:8d} {c['unmatched_rationales']:9d} "
        f"{c['yes_no_dropped']:7d}"
      )
  total = counts.get("total", {})
  lines.append(
    f"total: {total.get('train', 0)} train, {total.get('test', 0)} test; "
    f"{counts.get('skipped', 0)} skipped"
  )
  return "\n".join(lines)
