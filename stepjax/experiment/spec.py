r"""Experiment configs: a grid of runs x seeds at equal sampling compute.

  stepjax experiment --config=configs/experiments/NAME.py:ARG --workdir=DIR

trains one SFT warm start per seed, then every run of the grid from its
seed's SFT checkpoint, and reports mean metrics over seeds with bootstrap
confidence intervals (`runner.py`, `results.py`). Example:
configs/experiments/example.py.

An experiment config is a Python file whose `get_config(arg=None)` returns a
locked `ml_collections.ConfigDict` with these keys:

  base         a full job config: what every run shares. Load one with
               `config_utils.load_config_file(".../synthmed_tiny.py", arg)`.
               Needs base.sft.steps > 0: per seed S the grid trains
               base + seed=S + train.steps=0 once; its final eval is the
               "SFT start" that every run of seed S is compared with.
  seeds        tuple of distinct ints, e.g. (0, 1, 2).
  runs         the runs, in display order: a tuple of (name, overrides)
               pairs, e.g. (("grpo", "rl.algorithm=grpo"),
               ("mrpo_linear", "rl.algorithm=mrpo,rl.penalty=linear")).
               A ConfigDict name -> overrides works too (its keys come
               sorted). overrides: comma-separated dotted.key=value into
               base; each value is converted to the type of base's value
               (bool, int, float, str; tuples as Python literals:
               data.token_buckets=(96,128)); "" keeps base as it is. Names
               use letters, digits, "_", "-" and ".".
  baseline     the run that every other run's paired differences are
               taken against (e.g. "grpo").
  compare      tuple of (run_a, run_b) pairs: more paired differences
               a - b to report; () for none.
  eval_every   RL steps between periodic evals of each run (0 = none).
               Periodic evals score the same eval set as the final one.
  parallel     runs trained at once: 1 = one after another in this
               process, > 1 = worker subprocesses (2 on a 2-core CPU
               trains 1.56x as many runs per hour as 1; runner.py).
  bootstrap_samples  replicates of the hierarchical bootstrap (>= 100).

Optional keys:
  bootstrap_seed     int (default 0): results are deterministic.
  compilation_cache  bool (default True): runs share XLA compilations
                     through WORKDIR/jax_cache (all runs compile the same
                     functions; on a CPU this saves most of a minute a run).
  single_thread_workers  bool (default False): worker subprocesses run
                     XLA on one thread each (slower with parallel = cores;
                     see runner.py for the measurement).

Every run of seed S trains base + its overrides with seed=S, sft.steps=0,
init_from=WORKDIR/sft/seed_S/checkpoints, train.eval_every=eval_every and
train.eval_before_rl=False. Runs therefore may not override the keys the
grid sets (seed, init_from, sft.*, train.eval_every, train.eval_before_rl)
nor what has to match the shared SFT checkpoint and eval set (model.*,
tokenizer.*, data.dataset, data.path, data.eval_path, data.eval_split,
data.num_eval, data.image_size, data.difficulty, data.eval_verifier,
sampling.eval_temperature). All runs must sample the same number of
completions, train.steps x data.batch_size x sampling.group_size: the grid
compares methods at equal sampling compute.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import ml_collections

from stepjax import config_utils
from stepjax.errors import InputError

_REQUIRED = (
  "base",
  "seeds",
  "runs",
  "baseline",
  "compare",
  "eval_every",
  "parallel",
  "bootstrap_samples",
)
_OPTIONAL = {
  "bootstrap_seed": 0,
  "compilation_cache": True,
  "single_thread_workers": False,
}
# Keys the grid sets per job (a prefix ending in "." covers a group).
GRID_KEYS = ("seed", "init_from", "sft.", "train.eval_every")
GRID_KEYS += ("train.eval_before_rl",)
# Keys every run of a seed must share with its SFT checkpoint and eval set.
SHARED_KEYS = (
  "model.",
  "tokenizer.",
  "data.dataset",
  "data.path",
  "data.eval_path",
  "data.eval_split",
  "data.num_eval",
  "data.image_size",
  "data.difficulty",
  "data.eval_verifier",
  "sampling.eval_temperature",
)
# Model keys that shape only the step-value head, which every RL run starts
# fresh (an SFT checkpoint's head is never read): runs may differ in them.
HEAD_KEYS = ("model.step_value_hidden", "model.step_value_input")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_FORMAT_HINT = "see stepjax/experiment/spec.py for the format"


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
  """A validated experiment config (see the module docstring)."""

  base: ml_collections.ConfigDict
  seeds: tuple[int, ...]
  runs: dict[str, dict[str, Any]]  # name -> {dotted key: value}, in order
  run_specs: dict[str, str]  # name -> the overrides as written
  baseline: str
  compare: tuple[tuple[str, str], ...]
  eval_every: int
  parallel: int
  bootstrap_samples: int
  bootstrap_seed: int = 0
  compilation_cache: bool = True
  single_thread_workers: bool = False

  @property
  def run_names(self) -> list[str]:
    return list(self.runs)

  def pairs(self) -> list[tuple[str, str]]:
    """Paired differences to report: every run against the baseline, then
    the `compare` pairs not already listed."""
    out = [(name, self.baseline) for name in self.runs if name != self.baseline]
    out += [p for p in self.compare if p not in out]
    return out

  def run_config(self, name: str) -> ml_collections.ConfigDict:
    """base + the run's overrides (the grid's per-seed keys still unset)."""
    return apply_overrides(self.base, self.runs[name])


def from_config(config: Any) -> Experiment:
  """Validates an experiment ConfigDict; ValueError names what to fix."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise InputError(
      f"experiment config must be a ConfigDict, got {type(config).__name__}; "
      + _FORMAT_HINT
    )
  keys = set(config.keys())
  if {"rl", "model"} <= keys and "base" not in keys:
    raise InputError(
      "--config is a job config, not an experiment config: pass "
      "--config=configs/experiments/NAME.py (" + _FORMAT_HINT + ")"
    )
  missing = [k for k in _REQUIRED if k not in keys]
  if missing:
    raise InputError(f"experiment config lacks {missing}; " + _FORMAT_HINT)
  unknown = sorted(keys - set(_REQUIRED) - set(_OPTIONAL))
  if unknown:
    raise InputError(
      f"experiment config has unknown keys {unknown}; valid keys: "
      f"{list(_REQUIRED) + list(_OPTIONAL)}"
    )
  base = config.base
  if not isinstance(base, ml_collections.ConfigDict) or "sft" not in base:
    raise InputError("experiment `base` must be a job config; " + _FORMAT_HINT)
  if base.sft.steps <= 0:
    raise InputError(
      f"experiment base.sft.steps is {base.sft.steps}: the grid trains one "
      "SFT warm start per seed; set base.sft.steps > 0"
    )
  seeds = _int_tuple(config.seeds, "seeds")
  specs = _run_specs(config.runs)
  runs = {name: parse_overrides(text, base, name) for name, text in specs}
  baseline = config.baseline
  if baseline not in runs:
    raise InputError(
      f"experiment baseline {baseline!r} is not a run; runs: {list(runs)}"
    )
  compare = _pairs(config.compare, runs)
  optional = {k: config.get(k, v) for k, v in _OPTIONAL.items()}
  exp = Experiment(
    base=base,
    seeds=seeds,
    runs=runs,
    run_specs=dict(specs),
    baseline=baseline,
    compare=compare,
    eval_every=_count(config.eval_every, "eval_every", minimum=0),
    parallel=_count(config.parallel, "parallel", minimum=1),
    bootstrap_samples=_count(
      config.bootstrap_samples, "bootstrap_samples", minimum=100
    ),
    bootstrap_seed=int(optional["bootstrap_seed"]),
    compilation_cache=bool(optional["compilation_cache"]),
    single_thread_workers=bool(optional["single_thread_workers"]),
  )
  check_equal_compute(exp)
  return exp


def completions_sampled(config: Any) -> int:
  """Completions one RL run samples: steps x prompts x G."""
  return (
    config.train.steps * config.data.batch_size * config.sampling.group_size
  )


def check_equal_compute(exp: Experiment) -> None:
  """ValueError unless every run samples the same number of completions."""
  counts = {
    name: completions_sampled(exp.run_config(name)) for name in exp.runs
  }
  if len(set(counts.values())) > 1:
    raise InputError(
      f"runs sample different numbers of completions {counts}; the grid "
      "compares at equal sampling compute: make train.steps x "
      "data.batch_size x sampling.group_size equal in every run"
    )


# ---------------------------------------------------------------- overrides


def parse_overrides(
  text: str, base: ml_collections.ConfigDict, run: str
) -> dict[str, Any]:
  """Parses "a.b=v,c.d=w" into {"a.b": v, "c.d": w}, typed like base.

  Raises ValueError naming the run and the key for a malformed item, a key
  not in base, a key the grid owns, or a value of the wrong type.
  """
  if not isinstance(text, str):
    raise InputError(
      f"run {run!r}: overrides must be a string like 'rl.algorithm=grpo', "
      f"got {type(text).__name__}"
    )
  out: dict[str, Any] = {}
  for item in _split_items(text):
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
      raise InputError(
        f"run {run!r}: override {item!r} is not key=value; write e.g. "
        "rl.algorithm=grpo"
      )
    default = _lookup(base, key, run)
    _check_allowed(key, run)
    out[key] = _convert(raw.strip(), default, f"run {run!r}: {key}")
  return out


def apply_overrides(
  base: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
  """An unlocked copy of `base` with dotted-key `overrides` set."""
  config = config_utils.with_updates(base, overrides)
  config.unlock()
  return config


def _split_items(text: str) -> list[str]:
  """Splits on commas outside brackets and quotes."""
  items, depth, quote, start = [], 0, "", 0
  for i, ch in enumerate(text):
    if quote:
      quote = "" if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      items.append(text[start:i])
      start = i + 1
  items.append(text[start:])
  return [item.strip() for item in items if item.strip()]


def _lookup(base: ml_collections.ConfigDict, key: str, run: str) -> Any:
  problem = config_utils.unknown_key(base, key)
  if problem:
    raise InputError(
      f"run {run!r}: {problem}; overrides are dotted keys into the "
      "experiment's base config"
    )
  node: Any = base
  for name in key.split("."):
    node = node[name]
  if isinstance(node, ml_collections.ConfigDict):
    raise InputError(
      f"run {run!r}: {key!r} is a group of keys; override one of its keys "
      f"(e.g. {key}.{sorted(node.keys())[0]}=...)"
    )
  return node


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
  return any(
    key.startswith(p) if p.endswith(".") else key == p for p in patterns
  )


def _check_allowed(key: str, run: str) -> None:
  if _matches(key, GRID_KEYS):
    raise InputError(
      f"run {run!r}: {key!r} is set by the grid for every run; change it "
      "in the experiment (seeds, eval_every, base.sft.*) instead"
    )
  if _matches(key, SHARED_KEYS) and key not in HEAD_KEYS:
    raise InputError(
      f"run {run!r}: {key!r} must be the same in every run (runs share "
      "their seed's SFT checkpoint and eval set); change it in base"
    )


def _convert(raw: str, default: Any, where: str) -> Any:
  if isinstance(default, bool):
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise InputError(f"{where}={raw!r}: expected true or false")
  if isinstance(default, int | float):
    kind = type(default)
    try:
      return kind(raw)
    except ValueError:
      what = "an integer" if kind is int else "a number"
      raise InputError(f"{where}={raw!r}: expected {what}") from None
  if isinstance(default, str):
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
      return raw[1:-1]
    return raw
  if isinstance(default, tuple | list):
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = None
    if not isinstance(value, tuple | list):
      raise InputError(
        f"{where}={raw!r}: expected a tuple literal like (96, 128)"
      )
    return tuple(value)
  if default is None:
    try:
      return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      return raw
  raise InputError(
    f"{where}: values of type {type(default).__name__} cannot be overridden "
    "from a run's override string; set it in base"
  )


# ---------------------------------------------------------------- fields


def _run_specs(runs: Any) -> list[tuple[str, str]]:
  if isinstance(runs, ml_collections.ConfigDict):
    specs = list(runs.items())
  elif isinstance(runs, tuple | list) and all(
    isinstance(r, tuple | list) and len(r) == 2 for r in runs
  ):
    specs = [(str(name), text) for name, text in runs]
  else:
    raise InputError(
      "experiment `runs` must be a tuple of (name, overrides) pairs, e.g. "
      "(('grpo', 'rl.algorithm=grpo'),)"
    )
  if not specs:
    raise InputError("experiment `runs` is empty; give at least one run")
  names = [name for name, _ in specs]
  for name in names:
    if not _NAME.match(name) or name == "sft":
      raise InputError(
        f"run name {name!r}: use letters, digits, '_', '-' or '.' (and not "
        "'sft', the warm-start runs' name)"
      )
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise InputError(f"experiment `runs` names {dupes} more than once")
  return specs


def _pairs(compare: Any, runs: Mapping[str, Any]) -> tuple[tuple[str, str]]:
  pairs = []
  for pair in compare or ():
    if not isinstance(pair, tuple | list) or len(pair) != 2:
      raise InputError(
        f"experiment `compare` entry {pair!r} is not a (run_a, run_b) pair"
      )
    a, b = pair
    for name in (a, b):
      if name not in runs:
        raise InputError(
          f"experiment `compare` pair {tuple(pair)} names {name!r}, which "
          f"is not a run; runs: {list(runs)}"
        )
    if a == b:
      raise InputError(f"experiment `compare` pairs {a!r} with itself")
    pairs.append((a, b))
  return tuple(pairs)


def _int_tuple(values: Any, name: str) -> tuple[int, ...]:
  if isinstance(values, int):
    values = (values,)
  if not isinstance(values, tuple | list) or not values:
    raise InputError(f"experiment `{name}` must be a tuple of ints, e.g. (0,)")
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
    raise InputError(f"experiment `{name}` must hold ints, got {values}")
  if len(set(values)) != len(values):
    raise InputError(f"experiment `{name}` repeats a value: {tuple(values)}")
  return tuple(int(v) for v in values)


def _count(value: Any, name: str, minimum: int) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise InputError(
      f"experiment `{name}` is {value!r}; must be an int >= {minimum}"
    )
  return int(value)
