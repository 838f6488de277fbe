"""Errors for bad input data, naming the file and record at fault."""

from __future__ import annotations

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
