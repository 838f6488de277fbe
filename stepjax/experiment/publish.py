r"""Puts a grid's results into the repository and its README.

  python -m stepjax.experiment.publish RESULTS_DIR README.md \
      --dest=docs/results/synthmed [--marker=synthmed-results]

copies RESULTS_DIR's results.md, results.json and plots/*.png into DEST,
then replaces what lies between the README's

  <!-- synthmed-results:start -->
  <!-- synthmed-results:end -->

with results.md's text and links to the copied plots (paths relative to
the README). The README must already hold both markers, in that order; the
rest of it is left as it is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from etils import epath

from stepjax.errors import InputError
from stepjax.experiment import figures, results

RESULTS_MD = "results.md"


def publish(
  results_dir: str, readme: str, dest: str, marker: str = "synthmed-results"
) -> list[str]:
  """Copies the results to `dest` and rewrites the README section; returns
  the copied files. ValueError (one line) when something is missing."""
  source = epath.Path(results_dir)
  readme_path = epath.Path(readme)
  if not readme_path.exists():
    raise InputError(f"publish: README {readme} not found")
  start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
  text = readme_path.read_text()
  i, j = text.find(start), text.find(end)
  if i < 0 or j < 0 or j < i:
    raise InputError(
      f"publish: {readme} lacks the markers {start} ... {end} (in that "
      "order); add them where the results belong"
    )
  for name in (RESULTS_MD, results.RESULTS_FILE):
    if not (source / name).exists():
      raise InputError(
        f"publish: no {name} in {results_dir}; run `stepjax experiment` "
        "with that --workdir first"
      )
  out = epath.Path(dest)
  (out / figures.PLOTS_DIR).mkdir(parents=True, exist_ok=True)
  copied = []
  for name in (RESULTS_MD, results.RESULTS_FILE):
    shutil.copyfile(source / name, out / name)
    copied.append(str(out / name))
  plots = [
    name
    for name in figures.CAPTIONS
    if (source / figures.PLOTS_DIR / name).exists()
  ]
  for name in plots:
    target = out / figures.PLOTS_DIR / name
    shutil.copyfile(source / figures.PLOTS_DIR / name, target)
    copied.append(str(target))
  body = (source / RESULTS_MD).read_text().strip()
  links = []
  for name in plots:
    rel = os.path.relpath(
      str(out / figures.PLOTS_DIR / name), str(readme_path.parent)
    )
    links.append(f"![{figures.CAPTIONS[name]}]({rel.replace(os.sep, '/')})")
  section = "\n\n".join([start, body, *links, end])
  readme_path.write_text(text[:i] + section + text[j + len(end) :])
  return copied


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m stepjax.experiment.publish",
    description="Copy a grid's results into DEST and its README section.",
  )
  parser.add_argument("results_dir", help="the experiment's --workdir")
  parser.add_argument("readme", help="README to update, e.g. README.md")
  parser.add_argument("--dest", required=True, help="e.g. docs/results/x")
  parser.add_argument("--marker", default="synthmed-results")
  args = parser.parse_args(argv)
  try:
    copied = publish(args.results_dir, args.readme, args.dest, args.marker)
  except ValueError as e:
    print(str(e), file=sys.stderr)
    return 2
  print(f"published {len(copied)} files to {args.dest}; updated {args.readme}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
