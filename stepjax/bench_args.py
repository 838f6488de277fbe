"""The command line of the `python -m stepjax.<part>.bench` entry points:
switches (`--profile`) and positional integers, one line on bad input."""

from __future__ import annotations

import sys


def parse(
  argv: list[str],
  switches: tuple[str, ...],
  usage: str,
  max_numbers: int | None = None,
) -> tuple[set[str], list[int]]:
  """(the switches given, the positional integers) of `argv`; an unknown
  flag, a positional that is not an integer >= 1 or more than
  `max_numbers` of them prints `error: ...` with `usage` on one line and
  exits with code 2."""
  given = {a for a in argv if a in switches}
  numbers = []
  for arg in argv:
    if arg in switches:
      continue
    problem = None
    if arg.startswith("-"):
      problem = f"unknown flag {arg!r}"
    elif not arg.isdigit() or int(arg) < 1:
      problem = f"{arg!r} is not an integer >= 1"
    elif max_numbers is not None and len(numbers) >= max_numbers:
      problem = f"at most {max_numbers} number(s), got {arg!r} too"
    if problem:
      print(f"error: {problem}; usage: {usage}", file=sys.stderr)
      sys.exit(2)
    numbers.append(int(arg))
  return given, numbers
