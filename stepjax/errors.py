"""The one base class for errors the user can fix.

`stepjax.main` catches `UserError` around every subcommand and prints one
line, `error: <message>`, with exit code 2 (the stack only with
`--log_level=debug`). Anything else is a bug and keeps its stack. Raise a
subclass where the message names what is wrong (the file, record or flag)
and how to fix it.
"""

from __future__ import annotations

import logging
import sys


class UserError(Exception):
  """Bad input, a bad flag or a bad file: the message says what to fix."""


class InputError(UserError, ValueError):
  """A flag, config value or input file holds a value that cannot work."""


class MissingInputError(UserError, FileNotFoundError):
  """A file or directory the user named does not exist."""


def quiet_failed_restore_reports() -> None:
  """Drops the stacks that an Orbax restore failing halfway leaves behind.

  When a restore fails (a truncated checkpoint, another model), the reads
  still in flight end later: TensorStore calls back into the event loop
  Orbax ran them on, closed by then (Python reports each unraisable
  RuntimeError('Event loop is closed') with its stack), and asyncio logs
  each of the failed read tasks and futures as '... exception was never
  retrieved' with its stack. Dozens of stacks around the one line that
  says what went wrong and what was done about it (`stepjax train` falls
  back to the previous checkpoint, `eval` names the file). Installed once
  (by `stepjax.main` and before each `train.checkpoint.restore_params`):
  exactly those reports are dropped; anything else reaches the previous
  hook or handler.
  """
  previous = sys.unraisablehook
  if getattr(previous, "stepjax_quiet", False):
    return

  def hook(unraisable):
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
      return
    if _is_orbax_coroutine(unraisable.object):
      return  # a read still in flight when its restore had already failed
    previous(unraisable)

  hook.stepjax_quiet = True
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_orbax_task_filter)


def _is_orbax_coroutine(obj) -> bool:
  """Whether `obj` is a coroutine of Orbax's code (Python reports one whose
  error nobody awaited as 'Exception ignored in: <coroutine ...>')."""
  code = getattr(obj, "cr_code", None)
  return code is not None and "orbax" in code.co_filename


def _orbax_task_filter(record: logging.LogRecord) -> bool:
  """False for asyncio's report of an unretrieved error of one of Orbax's
  read tasks or TensorStore's read futures."""
  message = record.getMessage()
  return not (
    message.startswith(
      ("Task exception was never retrieved", "Future exception was never")
    )
    and ("orbax" in message or "tensorstore_spec" in message)
  )
