"""TPU chips `stepjax plan` knows: HBM per chip, and the check of a name.

A module of its own (no imports) so the command line can refuse an
unknown `--chip` before `stepjax plan` loads the model code.
"""

from __future__ import annotations

# HBM per chip in GiB (what one JAX device sees).
HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0, "v6e": 32.0}


def chip_problem(chip: str) -> str | None:
  """What is wrong with `chip` ("" = none given), or None."""
  if chip and chip not in HBM_GIB:
    return f"--chip={chip!r}: expected one of {sorted(HBM_GIB)}"
  return None
