"""The one base class for errors the user can fix.

`stepjax.main` catches `UserError` around every subcommand and prints one
line, `error: <message>`, with exit code 2 (the stack only with
`--log_level=debug`). Anything else is a bug and keeps its stack. Raise a
subclass where the message names what is wrong (the file, record or flag)
and how to fix it.
"""

from __future__ import annotations


class UserError(Exception):
  """Bad input, a bad flag or a bad file: the message says what to fix."""


class InputError(UserError, ValueError):
  """A flag, config value or input file holds a value that cannot work."""


class MissingInputError(UserError, FileNotFoundError):
  """A file or directory the user named does not exist."""
