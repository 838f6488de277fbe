r"""`stepjax data <tool>`: dataset tools.

  stepjax data build-mrpo --out=data/mrpo -- --vqa_rad=raw/VQA_RAD \
      --slake=raw/Slake1.0 --pathvqa=raw/path-vqa --medthink=raw/MedThink
  stepjax data build-tfds --out=gs://bucket/tfds -- --dataset=slake \
      --manual_dir=raw/Slake1.0

The dataset flags are this tool's own (argparse over the arguments after
the tool name), not absl flags: absl rejects flags it does not know, so put
them after `--`, which absl passes through untouched. `--out` may be given
either way.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from absl import app

from stepjax.errors import InputError

_TOOLS = {
  "build-mrpo": "MRPO train/test json from VQA-RAD, SLAKE, PathVQA, MedThink.",
  "build-tfds": "ArrayRecord (TFDS) copy of one dataset for pod training.",
}


def _usage() -> str:
  lines = ["usage: stepjax data <tool> [--flags]", "", "tools:"]
  lines += [f"  {name:11s} {text}" for name, text in _TOOLS.items()]
  return "\n".join(lines)


def _absl_out(flag_values: Any) -> str:
  try:
    return flag_values.out or ""
  except AttributeError:  # no --out defined (tests passing a stub)
    return ""


class _Parser(argparse.ArgumentParser):
  """argparse whose errors are one-line `InputError`s (the CLI's boundary
  prints them) instead of a usage dump and exit."""

  def error(self, message: str):
    raise InputError(f"{self.prog}: {message} (see {self.prog} --help)")


def _without_separator(args: Sequence[str]) -> list[str]:
  """The tool's flags with the `--` that ends stepjax's own flags removed
  (`stepjax data build-mrpo --out=D -- --slake=...`, as documented)."""
  return [a for a in args if a != "--"]


def _build_mrpo_parser() -> argparse.ArgumentParser:
  parser = _Parser(
    prog="stepjax data build-mrpo",
    description="Write MRPO's training and test sets (docs/datasets.md).",
  )
  parser.add_argument("--vqa_rad", help="VQA-RAD directory (json or parquet)")
  parser.add_argument("--slake", help="SLAKE directory (train.json, imgs/)")
  parser.add_argument("--pathvqa", help="PathVQA directory (parquet shards)")
  parser.add_argument("--medthink", required=True, help="MedThink directory")
  parser.add_argument("--out", help="output directory (else absl --out)")
  parser.add_argument(
    "--images",
    choices=("copy", "reference"),
    default="copy",
    help="copy images under out/images (default) or reference the sources",
  )
  parser.add_argument(
    "--on_bad_record", choices=("fail", "skip"), default="fail"
  )
  parser.add_argument(
    "--check_images",
    action="store_true",
    help="check that every image exists before writing anything",
  )
  return parser


def build_mrpo(args: Sequence[str], flag_values: Any) -> dict[str, Any]:
  """Runs build-mrpo with argparse-style `args`; returns the counts."""
  # Imported here so `stepjax data --help` stays fast.
  from stepjax.data.readers import build_mrpo as build_lib

  opts = _build_mrpo_parser().parse_args(_without_separator(args))
  out = opts.out or _absl_out(flag_values)
  if not out:
    raise app.UsageError("build-mrpo: give --out=<output directory>")
  datasets = {"vqa_rad": opts.vqa_rad, "slake": opts.slake}
  datasets["pathvqa"] = opts.pathvqa
  if not any(datasets.values()):
    raise app.UsageError(
      "build-mrpo: give at least one of --vqa_rad, --slake, --pathvqa"
    )
  counts = build_lib.build(
    out,
    medthink_dir=opts.medthink,
    datasets=datasets,
    images=opts.images,
    on_bad_record=opts.on_bad_record,
    check_images=opts.check_images,
  )
  print(build_lib.format_counts(counts))
  print(f"wrote {out}/train.json, test.json, counts.json, alignment.json")
  return counts


def build_tfds(args: Sequence[str], flag_values: Any) -> str:
  """Runs build-tfds with argparse-style `args`; returns the data_dir."""
  from stepjax.data.readers import tfds_builders

  parser = _Parser(prog="stepjax data build-tfds")
  parser.add_argument(
    "--dataset", required=True, choices=sorted(tfds_builders.BUILDERS)
  )
  parser.add_argument("--manual_dir", required=True, help="dataset directory")
  parser.add_argument("--data_dir", "--out", dest="data_dir", default="")
  parser.add_argument(
    "--on_bad_record", choices=("fail", "skip"), default="fail"
  )
  opts = parser.parse_args(_without_separator(args))
  data_dir = opts.data_dir or _absl_out(flag_values)
  if not data_dir:
    raise app.UsageError("build-tfds: give --data_dir=<TFDS data dir>")
  builder = tfds_builders.build(
    opts.dataset,
    opts.manual_dir,
    data_dir,
    on_bad_record=opts.on_bad_record,
  )
  sizes = {
    name: split.num_examples for name, split in builder.info.splits.items()
  }
  print(json.dumps({"builder": builder.name, "data_dir": data_dir, **sizes}))
  return data_dir


def main(argv: Sequence[str], config: Any, flag_values: Any) -> None:
  """Entry point from stepjax.main: argv[0] is the tool, then its flags."""
  del config  # the data tools take no job config
  if not argv or argv[0] not in _TOOLS:
    given = argv[0] if argv else "(none)"
    raise app.UsageError(f"unknown data tool {given!r}\n{_usage()}")
  tool, args = argv[0], argv[1:]
  if tool == "build-mrpo":
    build_mrpo(args, flag_values)
  else:
    build_tfds(args, flag_values)
