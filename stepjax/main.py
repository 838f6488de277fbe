r"""The `stepjax` command line: parses flags, then hands over to one function.

  stepjax train --config=configs/synthmed_tiny.py --workdir=runs/a \
      --config.rl.algorithm=grpo
  stepjax synthmed --out=runs/samples --num=16
  stepjax probe --checkpoint=runs/a --num=256
  stepjax bench sampler|train|rl|data|rollout|gpu
  stepjax experiment --config=configs/experiments/example.py:test \
      --workdir=runs/grid
  stepjax data build-mrpo --out=... --vqa_rad=... --slake=... --pathvqa=...

No logic lives here: each subcommand's module is imported lazily (so
`stepjax --help` is fast) and its `main(argv, config, flag_values)` is called
with the rest of the positional args, the parsed --config and absl's flag
values. Every flag is defined here, so subcommand modules never import main.

This is also the one error boundary: a `stepjax.errors.UserError` (bad input,
flag, config value or file), a usage error or a flag that does not parse
prints one line, `error: ...`, and exits with code 2; `--log_level=debug`
(or `--config.log_level=debug`) shows the stack instead. Any other exception
is a bug and keeps its stack.
"""

from __future__ import annotations

import importlib
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

from stepjax import chips, config_checks, config_utils, errors

_REPO_CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
_DEFAULT_CONFIG = str(_REPO_CONFIGS / "synthmed_tiny.py")

try:
  _CONFIG = config_flags.DEFINE_config_file(
    "config",
    _DEFAULT_CONFIG,
    "Job config file, optionally with a variant: path/to/config.py:arg.",
    lock_config=True,
  )
  _CONFIG_PROBLEM = None
except Exception as e:  # noqa: BLE001 - the user's config file, any error
  # ml_collections loads --config (and applies --config.* overrides) from
  # sys.argv as soon as the flag is defined; cli() reports what failed.
  _CONFIG, _CONFIG_PROBLEM = None, e
_WORKDIR = flags.DEFINE_string(
  "workdir", "runs/default", "Run directory (local or gs://)."
)
_OUT = flags.DEFINE_string("out", "", "Output directory or file.")
_NUM = flags.DEFINE_integer("num", 16, "Number of examples (synthmed).")
flags.DEFINE_string("checkpoint", "", "Orbax checkpoint or HF directory.")
flags.DEFINE_bool(
  "overwrite", False, "export: write into a non-empty --out directory."
)
flags.DEFINE_list(
  "image",
  [],
  "Image file(s) (PNG, JPEG, DICOM) for generate; several comma-separated "
  "paths make one prompt with those images, in order.",
)
flags.DEFINE_string("question", "", "Question about the image(s).")
flags.DEFINE_string("split", "eval", "Data split to evaluate.")
flags.DEFINE_list("compare", [], "Run directories to compare (eval).")
_SUITE = config_flags.DEFINE_config_file(
  "suite",
  None,
  "eval: benchmark suite config (configs/suites/paper.py:root=DIR); "
  "evaluates --checkpoint and the --compare checkpoints on each dataset.",
  lock_config=True,
)
flags.DEFINE_string("input", "", "Input file or directory (data tools).")
flags.DEFINE_float(
  "window_center", None, "DICOM window center (generate; default: file)."
)
flags.DEFINE_float(
  "window_width", None, "DICOM window width (generate; default: file)."
)
_LOG_LEVEL = flags.DEFINE_enum(
  "log_level",
  None,
  ["debug", "info", "warning", "error"],
  "Log verbosity (overrides --config.log_level); debug also shows the stack "
  "of user errors.",
)
flags.DEFINE_string(
  "chip", "", "TPU chip for `plan`: v5e | v5p | v4 | v6e (default: --config)."
)

# subcommand -> (module, function, one-line help)
_COMMANDS = {
  "train": ("stepjax.jobs", "main", "SFT then RL training."),
  "eval": ("stepjax.eval.run", "main", "Evaluate a checkpoint."),
  "judge-check": (
    "stepjax.eval.judge_check",
    "main",
    "Measure a step judge against SynthMed's step truth.",
  ),
  "probe": (
    "stepjax.eval.image_probe",
    "main",
    "Does a policy see lesions and their side? (SynthMed)",
  ),
  "generate": (
    "stepjax.eval.generate",
    "main",
    "Reason on one image or several (--image=a.png,b.png).",
  ),
  "export": ("stepjax.eval.export", "main", "Write an HF directory."),
  "plan": ("stepjax.eval.plan", "main", "Per-device memory plan."),
  "synthmed": ("stepjax.data.synthmed_cli", "main", "Write SynthMed samples."),
  "data": ("stepjax.data.cli", "main", "Dataset tools (build-mrpo, ...)."),
  "bench": (
    "stepjax.bench",
    "main",
    "Benchmarks: sampler | train | rl | data | rollout | gpu.",
  ),
  "experiment": (
    "stepjax.experiment.cli",
    "main",
    "Grid of runs x seeds: results with CIs, plots.",
  ),
}


# Subcommands that take a job config (checked before any work starts).
_JOB_COMMANDS = (
  "train",
  "eval",
  "generate",
  "export",
  "plan",
  "judge-check",
  "synthmed",
  "probe",
)


# Commands whose first positional names a tool (`stepjax bench sampler`,
# `stepjax data build-mrpo`); every other command takes none, and a stray
# one is refused with the hint below where it has one.
_TAKES_A_TOOL = ("bench", "data")
_POSITIONAL_HINTS = {
  "synthmed": "; use --out=DIR --num=N and --config.data.* overrides",
  "experiment": "; the grid comes from --config=configs/experiments/NAME.py",
}


def _usage_problem(command: str, args: list[str], fv) -> str | None:
  """What is wrong with a command's positional args and required flags,
  checked here, before its module (seconds of imports) is loaded."""
  if args and command not in _TAKES_A_TOOL:
    return (
      f"{command} takes no positional arguments, got {args}"
      + _POSITIONAL_HINTS.get(command, "")
    )
  if command == "eval" and not (fv.checkpoint or fv.compare or fv.suite):
    return (
      "eval needs --checkpoint=RUN_OR_HF_DIR (to evaluate), "
      "--compare=DIR_A,DIR_B (to compare reports) or --suite=SUITE.py"
    )
  if command == "plan" and fv.chip:
    problem = chips.chip_problem(fv.chip)
    if problem:
      return problem
  if command == "probe" and not fv.checkpoint:
    return "probe needs --checkpoint=RUN_OR_CHECKPOINT_DIR"
  if command == "export" and not fv.out:
    return "export needs --out=HF_DIR (the directory to write)"
  if command == "generate":
    if fv.input and not fv.out:
      return "generate --input=LIST.json needs --out=OUT.jsonl"
    if not fv.input and not (fv.image and fv.question):
      return (
        "generate needs --image=PATH[,PATH...] and --question='...' (or "
        "--input=LIST)"
      )
  return None


def _usage() -> str:
  lines = ["usage: stepjax <command> [--flags]", "", "commands:"]
  lines += [f"  {name:12s} {cmd[2]}" for name, cmd in _COMMANDS.items()]
  return "\n".join(lines)


def _main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] not in _COMMANDS:
    given = argv[1] if len(argv) > 1 else "(none)"
    _fail(f"unknown command {given!r}; commands: {', '.join(_COMMANDS)}")
  module_name, fn_name, _ = _COMMANDS[argv[1]]
  config = _CONFIG.value
  # A config file that failed to load raises only when used: --config and
  # --suite are touched here, inside the error boundary.
  loaded = [("config", config)]
  if _SUITE.value is not None:
    loaded.append(("suite", _SUITE.value))
  for name, value in loaded:
    try:
      value.keys()
    except (AttributeError, OSError, ValueError) as e:
      if _LOG_LEVEL.value == "debug":
        raise
      _fail(_flag_problem(sys.argv) or f"--{name}: {e}")
  if argv[1] != "experiment" and "base" in config:
    _fail(
      "--config is an experiment config (configs/experiments/); "
      f"`stepjax {argv[1]}` takes a job config such as {_DEFAULT_CONFIG}"
    )
  _apply_log_level(config)
  problem = _usage_problem(argv[1], argv[2:], flags.FLAGS)
  if problem:
    _fail(problem)
  try:
    if argv[1] in _JOB_COMMANDS:
      config_checks.check(config, training=argv[1] == "train")
    if argv[1] == "experiment":
      # The grid is validated (pure, ~0.1 s) before the runner's imports.
      from stepjax.experiment import spec

      spec.from_config(config)
    module = importlib.import_module(module_name)
    getattr(module, fn_name)(argv[2:], config, flags.FLAGS)
  except (errors.UserError, app.UsageError) as e:
    if _debug(config):
      raise
    _fail(str(e))


def _apply_log_level(config) -> None:
  """--log_level wins over the config's log_level (job or experiment base)."""
  if _LOG_LEVEL.value is None:
    return
  for target in (config, config.get("base")):
    if target is not None and "log_level" in target:
      with target.unlocked():
        target.log_level = _LOG_LEVEL.value


def _debug(config) -> bool:
  levels = {_LOG_LEVEL.value, config.get("log_level")}
  if config.get("base") is not None:
    levels.add(config.base.get("log_level"))
  return "debug" in levels


def _fail(message: str) -> None:
  """Prints `error: message` on one line and exits with code 2."""
  line = "; ".join(
    part.strip() for part in message.splitlines() if part.strip()
  )
  print(f"error: {line}", file=sys.stderr)
  sys.exit(2)


def cli() -> None:
  """Console-script entry point."""
  errors.quiet_failed_restore_reports()
  if _CONFIG_PROBLEM is not None:
    if "--log_level=debug" in sys.argv:
      raise _CONFIG_PROBLEM
    _fail(_flag_problem(sys.argv) or f"flags: {_CONFIG_PROBLEM}")
  if (
    len(sys.argv) > 1
    and sys.argv[1] in ("help", "-h", "--help")
    and (len(sys.argv) == 2)
  ):
    print(_usage())
    return
  app.run(_main, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  """Parses stepjax's flags; unknown `--x` flags after a `data` subcommand
  pass through to its own parser (e.g. `stepjax data build-mrpo --slake=..`).
  """
  try:
    if len(argv) > 1 and argv[1] == "data":
      return flags.FLAGS(argv, known_only=True)
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - a flag or the user's config file
    # Besides flags.Error, ml_collections raises whatever a config file that
    # does not load raised, or KeyError for an override of a missing key.
    if "--log_level=debug" in argv:
      raise
    _fail(_flag_problem(argv) or f"flags: {e}")


def _flag_problem(argv: list[str]) -> str | None:
  """Names the --config (or --suite) file or --config.KEY override that
  failed to parse."""
  problem = _config_file_problem(argv, "config", _DEFAULT_CONFIG)
  return problem or _config_file_problem(argv, "suite", "")


def _config_file_problem(argv: list[str], flag: str, default: str):
  config_arg, overrides = default, []
  for arg in argv[2:]:
    name, _, value = arg.partition("=")
    if name == f"--{flag}":
      config_arg = value
    elif name.startswith(f"--{flag}."):
      overrides.append(name[len(f"--{flag}.") :])
  if not config_arg:
    return None
  path, _, variant = config_arg.partition(":")
  try:
    config = config_utils.load_config_file(path, variant or None)
  except errors.UserError as e:
    return f"--{flag}={config_arg}: {e}"
  except Exception as e:  # the config file's own error, whatever it is
    return f"--{flag}={config_arg}: cannot load it ({type(e).__name__}: {e})"
  for key in overrides:
    problem = config_utils.unknown_key(config, key)
    if problem:
      return f"--{flag}.{key}: {problem}"
  return None
