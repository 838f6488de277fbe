"""Errors for bad input data, naming the file and record at fault."""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Iterable, Mapping

from stepjax.errors import InputError, UserError

# Reasons whose text names a path or a size: their key comes from here.
_REASON_PATTERNS = (
  ("outside the data root", "path_outside_root"),
  ("patches (grid", "too_many_patches"),
  ("data.token_buckets", "prompt_too_long"),
  ("SFT target has", "target_too_long"),
  ("data.max_images", "too_many_images"),
)
_KEY_END = re.compile(r"[:;,(]")


class BadRecordError(UserError, ValueError):
  """A record (or the file holding it) cannot be used.

  Carries where the problem is so that `data.on_bad_record = "skip"` can
  count and report it and `"fail"` can stop with a message a user can act on.
  """

  def __init__(self, reason: str, *, file: str = "", record: str = ""):
    self.reason = reason
    self.file = str(file)
    self.record = str(record)
    where = ", ".join(
      p
      for p in (
        f"file {self.file}" if self.file else "",
        f"record {self.record}" if self.record else "",
      )
      if p
    )
    super().__init__(f"{where}: {reason}" if where else reason)


class PathOutsideRootError(BadRecordError):
  """A path named by a record resolves outside its data root.

  Raised by `readers.paths.inside_root`, the one path policy every reader
  and `stepjax data build-mrpo` use; a `BadRecordError`, so
  `on_bad_record="skip"` counts and drops the record. The message reads
  "record X in FILE: image path P resolves to R, outside the data root
  ROOT; ...".
  """

  def __init__(
    self,
    path: str = "",
    resolved: str = "",
    root: str = "",
    *,
    file: str = "",
    record: str = "",
    what: str = "image path",
    fix: str = "move the file under the root or fix the path",
  ):
    self.path = str(path)
    self.resolved = str(resolved)
    self.root = str(root)
    self.what = what
    super().__init__(
      f"{what} {self.path} resolves to {self.resolved}, outside the data "
      f"root {self.root}; {fix}",
      file=file,
      record=record,
    )
    where = f"record {self.record}" if self.record else ""
    if self.file:
      where = f"{where} in {self.file}" if where else self.file
    self.args = (f"{where}: {self.reason}" if where else self.reason,)

  def __reduce__(self):
    # Rebuilt with its fields when it crosses a process (Grain workers).
    return (
      functools.partial(
        type(self), file=self.file, record=self.record, what=self.what
      ),
      (self.path, self.resolved, self.root),
    )


def reason_key(reason: str) -> str:
  """A short stable key for a bad-record reason, for counts and metrics.

  "image file not found" -> "image_file_not_found"; "cannot read image
  file: [Errno 13] ..." -> "cannot_read_image_file" (the text before the
  first ":;,(" ); reasons that name a path or a size map to a fixed key
  ("path_outside_root", "too_many_patches", ...).
  """
  for needle, key in _REASON_PATTERNS:
    if needle in reason:
      return key
  head = _KEY_END.split(reason, maxsplit=1)[0]
  key = re.sub(r"[^0-9a-z]+", "_", head.lower()).strip("_")[:48].strip("_")
  return key or "other"


def count_reasons(reasons: Iterable[str]) -> dict[str, int]:
  """Reason texts -> {reason_key: count}, most common first."""
  counts = collections.Counter(reason_key(r) for r in reasons)
  return dict(counts.most_common())


def most_common_first(counts: Mapping[str, int]) -> dict[str, int]:
  """{key: n} ordered by count, largest first, then by key."""
  return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def describe_counts(counts: Mapping[str, int], top: int = 3) -> str:
  """{key: n} -> "12 image file not found, 2 duplicate id" (most common
  `top`, then "and N more")."""
  ranked = list(most_common_first(counts).items())
  parts = [f"{n} {key.replace('_', ' ')}" for key, n in ranked[:top]]
  rest = sum(n for _, n in ranked[top:])
  if rest:
    parts.append(f"{rest} for other reasons")
  return ", ".join(parts)


class AllRecordsSkippedError(InputError):
  """A pass over the data kept no record: every one was a bad record.

  Raised instead of looping forever (a repeating training iterator) or
  yielding nothing (evaluation) under `data.on_bad_record="skip"`. The
  message names the source, the count and the most common reasons.
  """

  def __init__(
    self,
    source: str,
    count: int,
    counts: Mapping[str, int],
    *,
    first: str = "",
    when: str = "",
  ):
    self.source = source
    self.count = int(count)
    self.counts = dict(counts)
    message = (
      f"{source}: all {self.count} records{when} were skipped "
      f"({describe_counts(self.counts)}); fix the data or the paths"
    )
    if first:
      message += f" (first: {first})"
    super().__init__(message)
