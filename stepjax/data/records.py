"""The record every data source yields, whatever its on-disk layout.

A source (SynthMed in memory, MRPO json, VQA-RAD, SLAKE, PathVQA, TFDS ...)
is a Grain random-access source whose `__getitem__` returns a `Record`.
Images stay undecoded (a path or encoded bytes) until the pipeline's decode
step, so sources are cheap to index and pickle.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from stepjax.data import errors


def text_value(
  value: Any, name: str, *, file: str = "", record: str = ""
) -> str:
  """A question, answer or id field as text: the one check every reader uses.

  Text is kept (stripped by the caller); an integer or a finite real number
  (VQA-RAD's numeric answers, a parquet int column) becomes `str(value)`.
  Anything else is a bad record naming `file` and `record`: a JSON `NaN`
  or `Infinity` (Python's json accepts them) would otherwise train on the
  answer "nan", and a bool, list, object or null is no answer at all.

  Raises:
    errors.BadRecordError: the value is not text or a finite number.
  """
  if isinstance(value, str):
    return value
  is_bool = isinstance(value, (bool, np.bool_))
  if isinstance(value, numbers.Real) and not is_bool:
    if isinstance(value, numbers.Integral) or math.isfinite(value):
      return str(value)
    raise errors.BadRecordError(
      f"non-finite number in field {name!r} ({value!r}); write it as a "
      "string or a finite number",
      file=file,
      record=record,
    )
  raise errors.BadRecordError(
    f"field {name!r} must be a string or number, got "
    f"{type(value).__name__} {value!r}",
    file=file,
    record=record,
  )


@dataclasses.dataclass(frozen=True)
class ImageRef:
  """Where a record's image comes from; exactly one field is set.

  path: a local or gs:// path to an encoded image (PNG, JPEG, DICOM).
  data: the encoded bytes of such a file (parquet rows, ArrayRecord).
  array: an already decoded uint8 image, HxW (grayscale) or HxWxC.
  """

  path: str | None = None
  data: bytes | None = None
  array: np.ndarray | None = None

  def __post_init__(self):
    set_fields = [
      n for n in ("path", "data", "array") if getattr(self, n) is not None
    ]
    if len(set_fields) != 1:
      raise ValueError(
        "ImageRef needs exactly one of path, data, array; got "
        f"{set_fields or 'none'}"
      )

  def describe(self) -> str:
    """A short human description used in error messages."""
    if self.path is not None:
      return str(self.path)
    if self.data is not None:
      return f"<{len(self.data)} encoded bytes>"
    return f"<array {self.array.shape} {self.array.dtype}>"


@dataclasses.dataclass(frozen=True)
class Record:
  """One image-question example (one image, or several in order).

  id: unique within its source (duplicates are a bad-input error).
  question / answer: non-empty strings (numbers are converted to str by the
    readers).
  image: the (first) image; extra_images: any further ones, in the order
    the prompt shows them (MRPO json's list of paths); `images` is all.
  rationale: gold step-by-step reasoning ("" when the dataset has none).
  dataset: short name of the source ("synthmed", "vqa_rad", ...).
  origin: the file (and row) the record came from, for error messages.
  meta: JSON-serialisable extras; SynthMed puts its scene under "scene".
  """

  id: str
  question: str
  answer: str
  image: ImageRef
  rationale: str = ""
  dataset: str = ""
  origin: str = ""
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  extra_images: tuple[ImageRef, ...] = ()

  @property
  def images(self) -> tuple[ImageRef, ...]:
    """Every image of the record, in prompt order."""
    return (self.image, *self.extra_images)

  def __post_init__(self):
    # A backstop for sources that skip `text_value`: never train on a
    # question or answer that is not text (e.g. float NaN -> "nan").
    for name in ("question", "answer"):
      value = getattr(self, name)
      if not isinstance(value, str):
        raise errors.BadRecordError(
          f"{name} must be text, got {type(value).__name__} {value!r}",
          file=self.origin,
          record=str(self.id),
        )
