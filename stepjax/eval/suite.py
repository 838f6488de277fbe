r"""`stepjax eval --suite=...`: checkpoints x benchmarks, one table.

  stepjax eval --suite=configs/suites/paper.py:root=/data/medvqa \
      --checkpoint=runs/mrpo --workdir=runs/table
  stepjax eval --suite=configs/suites/paper.py:root=gs://bucket/medvqa \
      --compare=runs/grpo,runs/gdpo,runs/mrpo --workdir=runs/table

A suite config (a Python config file like configs/suites/paper.py; its keys
are documented in docs/suite.md) names datasets, each with its `data.dataset`
source name, a local or gs:// path, a split, an optional `limit` (the first
N records) and `open_ended` (drop yes/no answers, as MRPO's test set does).

First every dataset's source is built. A dataset whose path does not exist
is reported on one line and skipped (the table marks it "missing", and the
averages say how many datasets they cover): a user without a credentialed
copy of MIMIC-CXR-VQA still gets the other seven columns. Anything else
wrong with a copy (layout, malformed file, bad record under
`data.on_bad_record=fail`) fails here, naming the dataset, before any model
work. Then each checkpoint (`--checkpoint`, then every `--compare` entry)
is loaded once and evaluated on every dataset through `eval.run.run`, the
evaluation `stepjax eval` runs (steps labelled by the configured judge
where there is one, answers by exact match and, with
`eval.answer_judge=judge`, by the answer judge). Reports and records go to
WORKDIR/<checkpoint>/<dataset>/; the table (`eval.suite_table`) to
WORKDIR/suite.json, suite.md and suite.png.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from absl import logging
from etils import epath

from stepjax.data import sources
from stepjax.data.readers import base, paths
from stepjax.errors import InputError, MissingInputError, UserError
from stepjax.eval import checkpoints, suite_table
from stepjax.eval import run as eval_run

MISSING = "missing"
# Keys a suite's dataset entry may set, with their defaults (None: needed).
ENTRY_KEYS: dict[str, Any] = {
  "dataset": None,
  "path": None,
  "label": "",
  "split": "test",
  "limit": 0,
  "open_ended": False,
  "group": "",
  "image_dir": "",
}
# Sources generated in memory: they have no path to evaluate on.
_NOT_ON_DISK = ("synthmed", "in_memory")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One dataset of a suite (see ENTRY_KEYS and docs/suite.md)."""

  name: str
  dataset: str
  path: str
  label: str
  split: str
  limit: int
  open_ended: bool
  group: str
  image_dir: str

  @property
  def flag(self) -> str:
    return f"--suite.datasets.{self.name}"


@dataclasses.dataclass
class Prepared:
  """An entry with its records, or why it has none (status "missing")."""

  entry: Entry
  source: Any = None
  status: str = "ok"
  reason: str = ""
  num_read: int = 0


def entries(suite: Any) -> list[Entry]:
  """The suite's datasets in table order, checked (errors name the flag)."""
  if suite is None or "datasets" not in suite or not suite.datasets:
    raise InputError(
      "--suite: the config has no `datasets`; see configs/suites/paper.py"
    )
  names = list(suite.datasets.keys())
  order = list(suite.get("order") or ())
  if order:
    unknown = [n for n in order if n not in names]
    unlisted = [n for n in names if n not in order]
    if unknown or unlisted:
      raise InputError(
        f"--suite.order names {unknown or 'no'} unknown dataset(s) and "
        f"leaves out {unlisted or 'none'}; list every key of "
        f"suite.datasets ({names}) once"
      )
    names = order
  return [_entry(name, suite.datasets[name]) for name in names]


def _entry(name: str, raw: Any) -> Entry:
  flag = f"--suite.datasets.{name}"
  if not isinstance(raw, Mapping) and not hasattr(raw, "keys"):
    raise InputError(f"{flag}: expected a dict of {sorted(ENTRY_KEYS)}")
  for key in raw.keys():
    if key not in ENTRY_KEYS:
      close = difflib.get_close_matches(key, ENTRY_KEYS, n=1)
      hint = f" (did you mean {close[0]}?)" if close else ""
      raise InputError(
        f"{flag}.{key}: unknown key{hint}; keys: {sorted(ENTRY_KEYS)}"
      )
  values = {k: raw.get(k, default) for k, default in ENTRY_KEYS.items()}
  for key in ("dataset", "path"):
    if not values[key] or not isinstance(values[key], str):
      raise InputError(f"{flag}.{key} must be set (a non-empty string)")
  known = [n for n in sources.source_names() if n not in _NOT_ON_DISK]
  if values["dataset"] not in known:
    close = difflib.get_close_matches(values["dataset"], known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise InputError(
      f"{flag}.dataset={values['dataset']!r} is not a dataset read from "
      f"disk{hint}; known: {known}"
    )
  limit = values["limit"]
  if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
    raise InputError(f"{flag}.limit={limit!r}: expected an integer >= 0")
  return Entry(
    name=name,
    dataset=values["dataset"],
    path=str(values["path"]),
    label=str(values["label"] or name),
    split=str(values["split"]),
    limit=int(limit),
    open_ended=bool(values["open_ended"]),
    group=str(values["group"]),
    image_dir=str(values["image_dir"] or ""),
  )


# ---------------------------------------------------------------- sources


class SubsetSource:
  """The records of `source` at `indices`, in that order."""

  def __init__(self, source: Any, indices: Sequence[int]):
    self.source = source
    self.indices = [int(i) for i in indices]
    self.skipped = getattr(source, "skipped", [])

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[self.indices[int(index)]]

  def __repr__(self) -> str:
    return f"SubsetSource({self.source!r}, {len(self)} records)"


def _answers(source: Any) -> list[str]:
  """Every record's reference answer, without reading images where the
  source keeps parsed rows (`readers.base.RecordSource.rows`)."""
  rows = getattr(source, "rows", None)
  if rows is not None:
    return [row.answer for row in rows]
  return [source[i].answer for i in range(len(source))]


def select(source: Any, entry: Entry) -> Any:
  """`source` without yes/no answers (`open_ended`), cut to `limit`."""
  indices = list(range(len(source)))
  if entry.open_ended:
    answers = _answers(source)
    indices = [i for i in indices if not base.is_yes_no(answers[i])]
  if entry.limit:
    indices = indices[: entry.limit]
  if not indices:
    why = " (all yes/no; set open_ended=False)" if entry.open_ended else ""
    raise InputError(
      f"{entry.flag} ({entry.dataset} at {entry.path}, split "
      f"{entry.split}): no records to evaluate, {len(source)} read{why}"
    )
  if len(indices) == len(source):
    return source
  return SubsetSource(source, indices)


def prepare(entry: Entry, on_bad_record: str) -> Prepared:
  """The entry's records; status "missing" when its path does not exist."""
  if not paths.as_path(entry.path).exists():
    return Prepared(
      entry, status=MISSING, reason=f"{entry.path} does not exist"
    )
  kwargs: dict[str, Any] = {"on_bad_record": on_bad_record}
  if entry.dataset != "mrpo_json":
    kwargs["split"] = entry.split
  if entry.image_dir:
    kwargs["image_dir"] = entry.image_dir
  try:
    source = sources.make_source(entry.dataset, entry.path, **kwargs)
  except TypeError as e:
    if not entry.image_dir:
      raise
    raise InputError(
      f"{entry.flag}.image_dir: the {entry.dataset} reader takes no "
      f"image_dir ({e}); leave it empty"
    ) from e
  except UserError as e:
    raise InputError(
      f"{entry.flag} ({entry.dataset} at {entry.path}): {e}"
    ) from e
  return Prepared(entry, source=select(source, entry), num_read=len(source))


def prepare_all(entries_: Sequence[Entry], on_bad_record: str) -> list:
  """Every entry prepared; missing ones reported on one line each."""
  prepared = []
  for entry in entries_:
    p = prepare(entry, on_bad_record)
    if p.status == MISSING:
      line = (
        f"suite: {entry.label} ({entry.dataset}): {p.reason}; skipped "
        '(marked "missing" in the table)'
      )
      logging.warning(line)
      print(line, flush=True)
    prepared.append(p)
  if all(p.status == MISSING for p in prepared):
    raise MissingInputError(
      "--suite: no dataset of the suite was found ("
      + "; ".join(f"{p.entry.name}: {p.reason}" for p in prepared)
      + "); set the suite's root or --suite.datasets.NAME.path"
    )
  return prepared


# -------------------------------------------------------------------- run


def checkpoint_names(paths_: Sequence[str]) -> list[str]:
  """A directory name per checkpoint, unique (`runs/a` -> `a`)."""
  names: list[str] = []
  for path in paths_:
    base_name = epath.Path(path).name or "checkpoint"
    name, k = base_name, 2
    while name in names:
      name, k = f"{base_name}-{k}", k + 1
    names.append(name)
  return names


def evaluate_checkpoint(
  config: Any,
  checkpoint: str,
  out_dir: str,
  prepared: Sequence[Prepared],
  *,
  suite_name: str,
  num_samples: int = 1,
) -> dict[str, dict | None]:
  """{entry name: report, or None when missing} of one checkpoint."""
  loaded = checkpoints.load(config, checkpoint)
  reports: dict[str, dict | None] = {}
  for p in prepared:
    entry = p.entry
    if p.status == MISSING:
      reports[entry.name] = None
      continue
    entry_config = checkpoints.with_updates(
      loaded.config,
      **{
        "data.dataset": entry.dataset,
        "data.eval_path": entry.path,
        "data.eval_split": entry.split,
      },
    )
    report = eval_run.run(
      entry_config,
      checkpoint,
      str(epath.Path(out_dir) / entry.name),
      num_samples=num_samples,
      loaded=dataclasses.replace(loaded, config=entry_config),
      source=p.source,
      meta={
        "eval": entry.name,
        "split": entry.split,
        "suite": suite_name,
        "data_path": entry.path,
        "limit": entry.limit,
        "open_ended": entry.open_ended,
        "records_read": p.num_read,
      },
      draw_plots=False,
    )
    reports[entry.name] = report
    print(
      f"suite: {epath.Path(out_dir).name} on {entry.label}: "
      f"{eval_run.evaluate.summary_line(report)}",
      flush=True,
    )
  return reports


def run(
  config: Any,
  suite: Any,
  checkpoints_: Sequence[str],
  workdir: str,
  *,
  num_samples: int = 1,
) -> dict[str, Any]:
  """Evaluates every checkpoint on every dataset of `suite`; writes
  suite.json, suite.md and suite.png into `workdir`; returns the table."""
  if not checkpoints_:
    raise InputError(
      "eval --suite needs --checkpoint=RUN_OR_HF_DIR and/or "
      "--compare=RUN_A,RUN_B (the checkpoints to evaluate)"
    )
  entries_ = entries(suite)
  suite_name = str(suite.get("name") or "suite")
  prepared = prepare_all(entries_, config.data.on_bad_record)
  out = epath.Path(workdir)
  results = {}
  for name, checkpoint in zip(checkpoint_names(checkpoints_), checkpoints_):
    results[name] = evaluate_checkpoint(
      config,
      checkpoint,
      str(out / name),
      prepared,
      suite_name=suite_name,
      num_samples=num_samples,
    )
  table = suite_table.build(
    suite_name,
    str(suite.get("title") or ""),
    [_dataset_info(p) for p in prepared],
    results,
    checkpoints=dict(zip(results, checkpoints_)),
  )
  if jax.process_index() == 0:  # every host evaluated; one writes
    suite_table.write(table, str(out))
  return table


def _dataset_info(p: Prepared) -> dict[str, Any]:
  info = dataclasses.asdict(p.entry)
  info.update(
    status=p.status,
    reason=p.reason,
    records_read=p.num_read,
    num_selected=0 if p.source is None else len(p.source),
  )
  return info


def main(config: Any, suite: Any, flag_values: Any) -> None:
  """`stepjax eval --suite=...` (see the module docstring)."""
  present = lambda name: flag_values[name].present  # noqa: E731
  if present("split"):
    raise InputError(
      "--split has no meaning with --suite: set each dataset's split in "
      "the suite (--suite.datasets.NAME.split=...)"
    )
  num = flag_values.num if present("num") else 1
  paths_ = [flag_values.checkpoint] if flag_values.checkpoint else []
  paths_ += list(flag_values.compare or [])
  table = run(config, suite, paths_, flag_values.workdir, num_samples=num)
  print(suite_table.markdown_summary(table), flush=True)
  print(
    f"wrote {flag_values.workdir}/suite.md, suite.json and suite.png",
    flush=True,
  )
