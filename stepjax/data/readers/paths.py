"""Local and gs:// paths for the readers, through `etils.epath`.

Every path argument of a reader goes through `as_path`, so a directory on a
TPU VM's disk and a bucket (`gs://bucket/slake`) are read the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Sequence
from typing import Any

from etils import epath

from stepjax.data import errors
from stepjax.errors import InputError, MissingInputError


def as_path(path: epath.PathLike) -> epath.Path:
  """Returns `path` (str, os.PathLike or gs:// string) as an epath.Path."""
  return epath.Path(path)


def is_remote(path: epath.PathLike) -> bool:
  """True for gs:// (or any other scheme://) paths."""
  return "://" in str(path)


def inside_root(
  root: epath.PathLike,
  path: epath.PathLike,
  *,
  file: str = "",
  record: str = "",
  what: str = "image path",
  fix: str = "",
) -> epath.Path:
  """The path policy: `path`, named by a record, resolved inside `root`.

  Every reader, the MRPO json source, the decode step (given a root) and
  `stepjax data build-mrpo` (reading and writing) call this before a path
  taken from a data record is read, copied or written.

  Local paths: `path` is joined to `root` (an absolute `path` stands
  alone), then symlinks and `..` are resolved (`os.path.realpath`) for the
  path and for the root; the result must be the root or lie under it. A
  root that is itself a symlink (`imgs -> /mnt/disk/imgs`) is fine: the
  root is compared after resolving too. Remote (gs://) paths have no
  symlinks: they are normalised (`..`, `.`, `//`) as strings, without I/O,
  and must stay under a root of the same scheme.

  Args:
    root: the data root (a reader's image folder, the MRPO json's
      directory, build-mrpo's output directory), local or gs://.
    path: relative to `root`, or absolute, as the record gives it.
    file, record: the data file and record, named in errors.
    what: what the path is, for messages ("image path").
    fix: how the user fixes a path outside the root (the error's hint;
      default: move the file under the root or fix the path).

  Returns:
    The resolved path (the real path, for local files).

  Raises:
    errors.PathOutsideRootError: the path resolves outside `root`.
    errors.BadRecordError: the path is empty or cannot be resolved.
  """
  if root is None or not str(root):
    raise ValueError(f"no data root to check the {what} {path!r} against")
  path, root = str(path), str(root)
  if not path.strip():
    raise errors.BadRecordError(f"empty {what}", file=file, record=record)
  if is_remote(root) or is_remote(path):
    resolved, real_root, inside = _remote_inside(root, path)
  else:
    try:
      real_root = os.path.realpath(root)
      resolved = os.path.realpath(os.path.join(root, path))
    except (OSError, ValueError) as e:
      raise errors.BadRecordError(
        f"{what} {path!r} cannot be resolved: {e}", file=file, record=record
      ) from None
    inside = os.path.commonpath([resolved, real_root]) == real_root
  if not inside:
    hint = {"fix": fix} if fix else {}
    raise errors.PathOutsideRootError(
      path, resolved, real_root, file=file, record=record, what=what, **hint
    )
  return epath.Path(resolved)


def _remote_parts(path: str) -> tuple[str, str]:
  """(scheme, normalised rest): gs://b/x/../y -> ("gs", "/b/y")."""
  scheme, sep, rest = path.partition("://")
  if not sep:
    return "", posixpath.normpath(path)
  # The leading "/" keeps ".." from climbing above the bucket.
  return scheme, posixpath.normpath("/" + rest)


def _remote_inside(root: str, path: str) -> tuple[str, str, bool]:
  """(resolved path, normalised root, inside?) without touching storage."""
  if not is_remote(path) and not posixpath.isabs(path):
    path = root.rstrip("/") + "/" + path
  scheme, rest = _remote_parts(path)
  root_scheme, root_rest = _remote_parts(root)
  resolved = f"{scheme}:/{rest}" if scheme else rest
  normal_root = f"{root_scheme}:/{root_rest}" if root_scheme else root_rest
  inside = scheme == root_scheme and (
    rest == root_rest or rest.startswith(root_rest.rstrip("/") + "/")
  )
  return resolved, normal_root, inside


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
  raise MissingInputError(
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
    raise InputError(
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
