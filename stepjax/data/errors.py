"""Errors for bad input data, naming the file and record at fault."""

from __future__ import annotations

import functools

from stepjax.errors import UserError


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
  ):
    self.path = str(path)
    self.resolved = str(resolved)
    self.root = str(root)
    self.what = what
    super().__init__(
      f"{what} {self.path} resolves to {self.resolved}, outside the data "
      f"root {self.root}; move the file under the root or fix the path",
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
