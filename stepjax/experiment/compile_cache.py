"""One persistent XLA compilation cache for all runs of a grid.

Every run of a grid jits the same functions with the same shapes (only the
seed-dependent init differs), so all but the first run of each kind can
load their executables from disk instead of compiling them again. On a
2-core CPU that is most of a minute per run of the default job.

In-process runs use `enabled(path)`; worker subprocesses get the same
directory through `env(path)`. A cache directory the user already chose
(JAX_COMPILATION_CACHE_DIR, or jax.config) is used instead of `path`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import jax
from jax.experimental.compilation_cache import compilation_cache

CACHE_DIR = "jax_cache"
_ENV = "JAX_COMPILATION_CACHE_DIR"


def chosen() -> str | None:
  """The cache directory the user set, if any."""
  return jax.config.jax_compilation_cache_dir or os.environ.get(_ENV) or None


@contextlib.contextmanager
def enabled(path: str) -> Iterator[str]:
  """Points JAX's persistent cache at `path` (or the user's choice) for the
  `with` block; yields the directory in use."""
  previous = jax.config.jax_compilation_cache_dir
  target = chosen() or path
  if previous == target:
    yield target
    return
  jax.config.update("jax_compilation_cache_dir", target)
  compilation_cache.reset_cache()  # a cache already set up would ignore it
  try:
    yield target
  finally:
    jax.config.update("jax_compilation_cache_dir", previous)
    compilation_cache.reset_cache()


def env(path: str) -> dict[str, str]:
  """Environment variables that give a subprocess the same cache."""
  return {_ENV: chosen() or path}
