"""A tiny name -> function registry for the RL math.

The trainer picks advantage estimators, penalty schedules and loss
aggregations by the strings in the config (`rl.algorithm`, `rl.penalty`,
`rl.loss_aggregation`); each module keeps one `Registry` per kind, and a
wrong name fails with the list of names that exist and the config key to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stepjax.errors import InputError

Fn = Callable[..., Any]


class Registry:
  """Functions of one kind, registered by name with a decorator."""

  def __init__(self, kind: str, config_key: str = ""):
    self.kind = kind
    self.config_key = config_key
    self._fns: dict[str, Fn] = {}

  def register(self, name: str) -> Callable[[Fn], Fn]:
    """Returns a decorator registering a function under `name`."""

    def decorator(fn: Fn) -> Fn:
      if name in self._fns:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._fns[name] = fn
      return fn

    return decorator

  def get(self, name: str) -> Fn:
    """The function registered as `name`; a clear error when there is none."""
    try:
      return self._fns[name]
    except KeyError:
      where = f" (config key {self.config_key})" if self.config_key else ""
      raise InputError(
        f"unknown {self.kind} {name!r}{where}; choose one of {self.names()}"
      ) from None

  def names(self) -> list[str]:
    return sorted(self._fns)

  def __contains__(self, name: str) -> bool:
    return name in self._fns
