"""Local and gs:// paths for the readers, through `etils.epath`.

Every path argument of a reader goes through `as_path`, so a directory on a
TPU VM's disk and a bucket (`gs://bucket/slake`) are read the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

from etils import epath

from stepjax.data import errors


def as_path(path: epath.PathLike) -> epath.Path:
  """Returns `path` (str, os.PathLike or gs:// string) as an epath.Path."""
  return epath.Path(path)


def first_existing(root: epath.Path, names: Sequence[str]) -> epath.Path:
  """Returns `root / name` for the first of `names` that exists.

  Raises:
    FileNotFoundError: naming the directory and every name that was tried,
      so a user can see which layout the reader expects.
  """
  for name in names:
    candidate = root / name
    if candidate.exists():
      return candidate
  raise FileNotFoundError(
    f"{root}: none of {list(names)} found; see docs/datasets.md for the "
    "layout this reader expects"
  )


def glob_sorted(root: epath.Path, pattern: str) -> list[epath.Path]:
  """`root.glob(pattern)` sorted by name, so shard order is stable."""
  return sorted(root.glob(pattern), key=str)


def read_json(path: epath.Path, **kwargs: Any) -> Any:
  """Parses a JSON file; a syntax error names the file and the line."""
  text = path.read_text(encoding="utf-8")
  try:
    return json.loads(text, **kwargs)
  except json.JSONDecodeError as e:
    raise ValueError(
      f"{path}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}"
    ) from e


def read_json_list(path: epath.Path, what: str = "questions") -> list:
  """A JSON file that must hold a list (of `what`); errors name the file."""
  items = read_json(path)
  if not isinstance(items, list):
    raise errors.BadRecordError(
      f"expected a JSON list of {what}, got {type(items).__name__}",
      file=str(path),
    )
  return items


def write_json(path: epath.Path, obj: Any) -> None:
  """Writes `obj` as indented UTF-8 JSON, creating the parent directory."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(
    json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
  )


def relative_to_dir(target: str, directory: epath.Path) -> str:
  """A path to `target` relative to `directory` where both are local.

  A gs:// (or other remote) target stays absolute: MRPO json readers accept
  absolute image paths as well as relative ones.
  """
  if "://" in str(target) or "://" in str(directory):
    return str(target)
  return os.path.relpath(str(target), str(directory))


def content_name(data: bytes, suffix: str) -> str:
  """A file name unique to `data`: the first 16 hex digits of its SHA-1."""
  return hashlib.sha1(data).hexdigest()[:16] + suffix


def image_suffix(data: bytes, fallback: str = ".jpg") -> str:
  """The file extension that matches encoded image bytes (magic numbers)."""
  if data.startswith(b"\xff\xd8\xff"):
    return ".jpg"
  if data.startswith(b"\x89PNG\r\n\x1a\n"):
    return ".png"
  if data[128:132] == b"DICM":
    return ".dcm"
  return fallback
