r"""The `stepjax` command line: parses flags, then hands over to one function.

  stepjax train --config=configs/synthmed_tiny.py --workdir=runs/a \
      --config.rl.algorithm=grpo
  stepjax synthmed --out=runs/samples --num=16
  stepjax bench sampler|train|rl
  stepjax experiment --config=configs/experiments/example.py:test \
      --workdir=runs/grid
  stepjax data build-mrpo --out=... --vqa_rad=... --slake=... --pathvqa=...

No logic lives here: each subcommand's module is imported lazily (so
`stepjax --help` is fast) and its `main(argv, config, flag_values)` is called
with the rest of the positional args, the parsed --config and absl's flag
values. Every flag is defined here, so subcommand modules never import main.
"""

from __future__ import annotations

import importlib
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

_REPO_CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
_DEFAULT_CONFIG = str(_REPO_CONFIGS / "synthmed_tiny.py")

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  _DEFAULT_CONFIG,
  "Job config file, optionally with a variant: path/to/config.py:arg.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", "runs/default", "Run directory (local or gs://)."
)
_OUT = flags.DEFINE_string("out", "", "Output directory or file.")
_NUM = flags.DEFINE_integer("num", 16, "Number of examples (synthmed).")
flags.DEFINE_string("checkpoint", "", "Orbax checkpoint or HF directory.")
flags.DEFINE_string("image", "", "Image file (PNG, JPEG, DICOM).")
flags.DEFINE_string("question", "", "Question about the image.")
flags.DEFINE_string("split", "eval", "Data split to evaluate.")
flags.DEFINE_list("compare", [], "Run directories to compare (eval).")
flags.DEFINE_string("input", "", "Input file or directory (data tools).")
flags.DEFINE_float(
  "window_center", None, "DICOM window center (generate; default: file)."
)
flags.DEFINE_float(
  "window_width", None, "DICOM window width (generate; default: file)."
)
flags.DEFINE_string(
  "chip", "", "TPU chip for `plan`: v5e | v5p | v4 | v6e (default: --config)."
)

# subcommand -> (module, function, one-line help)
_COMMANDS = {
  "train": ("stepjax.train.loop", "main", "SFT then RL training."),
  "eval": ("stepjax.eval.run", "main", "Evaluate a checkpoint."),
  "generate": ("stepjax.eval.generate", "main", "Reason on one image."),
  "export": ("stepjax.train.export", "main", "Write an HF directory."),
  "plan": ("stepjax.eval.plan", "main", "Per-device memory plan."),
  "synthmed": ("stepjax.data.synthmed_cli", "main", "Write SynthMed samples."),
  "data": ("stepjax.data.cli", "main", "Dataset tools (build-mrpo, ...)."),
  "bench": ("stepjax.bench", "main", "Benchmarks: sampler | train | rl."),
  "experiment": (
    "stepjax.experiment.cli",
    "main",
    "Grid of runs x seeds: results with CIs, plots.",
  ),
}


def _usage() -> str:
  lines = ["usage: stepjax <command> [--flags]", "", "commands:"]
  lines += [f"  {name:10s} {cmd[2]}" for name, cmd in _COMMANDS.items()]
  return "\n".join(lines)


def _main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] not in _COMMANDS:
    given = argv[1] if len(argv) > 1 else "(none)"
    raise app.UsageError(f"unknown command {given!r}\n{_usage()}")
  module_name, fn_name, _ = _COMMANDS[argv[1]]
  module = importlib.import_module(module_name)
  getattr(module, fn_name)(argv[2:], _CONFIG.value, flags.FLAGS)


def cli() -> None:
  """Console-script entry point."""
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
  if len(argv) > 1 and argv[1] == "data":
    return flags.FLAGS(argv, known_only=True)
  return flags.FLAGS(argv)
