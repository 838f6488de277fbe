r"""`stepjax judge-check`: how often is a step judge right? SynthMed knows.

  stepjax judge-check --config.judge.base_url=http://localhost:8000/v1 \
      --config.judge.model=Qwen/Qwen2.5-72B-Instruct --num=200 \
      --workdir=runs/judge_check_qwen72b
  stepjax judge-check --checkpoint=runs/sft ...   # + sampled completions

MRPO trains on an LLM judge's step labels; on SynthMed the truth of every
step is known (the rule verifier, `data.eval_verifier`, aligned by
default), so the judge can be measured before a TPU day is spent on its
labels. Two sets of completions with known step truth:

  rationales  `--num` SynthMed rationales (no model needed), a third each:
              gold chains (all valid), failure cascades (an early mistake
              that later steps and the answer follow,
              `synthmed_corrupt.make_cascade`) and gold chains with one
              corrupted step (wrong modality, side, count or organ,
              `synthmed_corrupt.corrupt_step`); from their own SynthMed
              seed stream (config.seed + 20000);
  sampled     with --checkpoint: `--num` completions the policy writes for
              SynthMed eval scans (`sampling.eval_temperature`; greedy by
              default), as `stepjax eval` samples them.

Every step goes to the step judge exactly as training would build it
(`train.components.process_source` with rl.process_source=judge: the
`judge.*` endpoint, or `judge.simulate=verifier`, with `rl.label_noise`),
and the report compares its labels with the verifier's
(`judge_agreement`): agreement, precision / recall / F1 of "invalid",
Cohen's kappa, the confusion matrix, agreement by step position (early /
mid / late, bucketed as the First Failure Point is) and by kind of
completion, and the cost (calls, cache hits, retries, fallbacks by cause,
tokens when the server reports usage, seconds). A completion whose judge
call fell back keeps the fallback labels (what training would use) and is
counted; with `judge.fallback=skip` it is left out and counted.

Writes report.json, report.md and judge_check.png into --workdir.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging
from etils import epath

from stepjax import config_utils
from stepjax.data import images, synthmed
from stepjax.data import synthmed_corrupt as corrupt_lib
from stepjax.errors import InputError
from stepjax.eval import judge_agreement
from stepjax.eval import judge_check_report as report_lib
from stepjax.rl import process

SETS = ("rationales", "sampled")
KINDS = ("gold", "cascade", "corrupted")
# SynthMed stream of the rationales: neither the training records
# (config.seed) nor the eval scans (config.seed + 10000).
RATIONALE_SEED_OFFSET = 20_000
DEFAULT_NUM = 100
# Completions per judge call batch: the progress bar moves per batch.
_CHUNK = 32


@dataclasses.dataclass(frozen=True)
class Item:
  """One completion with known step truth.

  truth: the verifier's K labels (1 = valid); kind: gold | cascade |
  corrupted | sampled; detail: which mistake (e.g. cascade_laterality).
  """

  set: str
  kind: str
  detail: str
  request: process.StepRequest
  truth: tuple[int, ...]


def _corrupt_one(
  steps: list[str], scene: Any, rng: np.random.Generator
) -> tuple[list[str], str] | None:
  """`steps` with one step made false (random step, random kind)."""
  for pos in rng.permutation(len(steps)):
    for kind in rng.permutation(corrupt_lib.CORRUPTIONS):
      new = corrupt_lib.corrupt_step(steps[pos], scene, str(kind), rng)
      if new is not None:
        out = list(steps)
        out[int(pos)] = new
        return out, f"corrupted_{kind}"
  return None


def rationale_items(config: Any, num: int) -> list[Item]:
  """`num` SynthMed rationales: gold, cascade and one-corrupted-step
  chains in turn, with the verifier's labels as truth. A pure function of
  (config.seed, data.image_size, data.difficulty, data.eval_verifier)."""
  d = config.data
  verify = synthmed.step_verifier(d.eval_verifier)
  seed = int(config.seed) + RATIONALE_SEED_OFFSET
  items = []
  for i in range(num):
    record = synthmed.make_record(
      seed, i, image_size=d.image_size, difficulty=d.difficulty
    )
    scene = synthmed.scene_of(record)
    rng = np.random.default_rng([seed, i, 31])
    steps, kind, detail = synthmed.gold_steps(scene), KINDS[i % 3], "gold"
    if kind == "cascade":
      cascade = corrupt_lib.make_cascade(scene, rng)
      if cascade is None:
        kind = "corrupted"
      else:
        steps, detail = list(cascade.steps), f"cascade_{cascade.kind}"
    if kind == "corrupted":
      made = _corrupt_one(steps, scene, rng)
      if made is None:
        kind = "gold"
      else:
        steps, detail = made
    truth = verify(steps, record.meta["scene"])
    request = process.StepRequest(
      record_id=f"{record.id}:{detail}",
      question=record.question,
      reference=record.answer,
      step_texts=tuple(steps),
      rationale=record.rationale,
      image=images.encoded_for_judge(record.image),
      meta={"scene": record.meta["scene"]},
    )
    items.append(
      Item("rationales", kind, detail, request, tuple(int(v) for v in truth))
    )
  return items


def sampled_items(
  config: Any, checkpoint: str, num: int, workdir: str
) -> list[Item]:
  """`num` completions of `checkpoint` on SynthMed eval scans, their steps
  labelled by the verifier (`data.eval_verifier`) as `stepjax eval` does.
  Completions without steps are dropped (nothing to judge)."""
  from stepjax.eval import checkpoints, evaluate
  from stepjax.eval import run as eval_run

  if config.data.dataset != "synthmed":
    raise InputError(
      f"judge-check --checkpoint samples SynthMed scans (their step truth "
      f"is known); --config.data.dataset={config.data.dataset!r}: use the "
      "default synthmed"
    )
  config = checkpoints.with_updates(config, **{"data.num_eval": num})
  loaded = checkpoints.load(config, checkpoint)
  source = eval_run.eval_source(loaded.config, "eval")
  task = evaluate.EvalTask(config=loaded.config, source=source, workdir=workdir)
  print(f"sampling {num} completions from {checkpoint}", flush=True)
  rows, _ = evaluate.score(loaded, task)
  records = {source[i].id: source[i] for i in range(len(source))}
  items = []
  for row in rows:
    if not row["steps"]:
      continue
    record = records[row["id"]]
    request = process.StepRequest(
      record_id=f"{row['id']}:sampled",
      question=row["question"],
      reference=row["gold_answer"],
      step_texts=tuple(row["steps"]),
      rationale=record.rationale,
      image=images.encoded_for_judge(record.image),
      meta={"scene": record.meta["scene"]},
    )
    truth = tuple(int(v) for v in row["step_labels"])
    items.append(Item("sampled", "sampled", "sampled", request, truth))
  return items


# ----------------------------------------------------------------- judge


def make_judge(config: Any) -> Any:
  """The step judge training would use (`rl.process_source=judge`)."""
  from stepjax.train import components

  if not config.judge.simulate and not (
    config.judge.base_url and config.judge.model
  ):
    raise InputError(
      "judge-check needs a step judge: set --config.judge.base_url and "
      "--config.judge.model (an OpenAI-compatible endpoint), or "
      "--config.judge.simulate=verifier for a dry run"
    )
  config = config_utils.with_updates(config, {"rl.process_source": "judge"})
  return components.process_source(config)


def _client(source: Any) -> Any:
  """The `JudgeClient` inside a process source, or None (simulated)."""
  seen = source
  while seen is not None:
    if hasattr(seen, "ask"):
      return seen
    seen = getattr(seen, "client", None) or getattr(seen, "inner", None)
  return None


def _progress(total: int, desc: str):
  import tqdm

  # disable=None: a bar on a terminal, nothing in a log file.
  return tqdm.tqdm(total=total, desc=desc, unit="step", disable=None)


def ask(source: Any, items: Sequence[Item], desc: str) -> list[Any]:
  """The judge's `StepLabels` for every item, in batches of `_CHUNK`
  completions with a progress bar (steps judged)."""
  out = []
  total = sum(len(it.truth) for it in items)
  print(f"{desc}: {total} steps of {len(items)} completions", flush=True)
  with _progress(total, desc) as bar:
    for start in range(0, len(items), _CHUNK):
      chunk = items[start : start + _CHUNK]
      out += source.label_steps([it.request for it in chunk])
      bar.update(sum(len(it.truth) for it in chunk))
  return out


def _tokens(client: Any) -> dict[str, int]:
  if client is None:
    return {"prompt_tokens": 0, "completion_tokens": 0}
  return {
    "prompt_tokens": int(client.stats["prompt_tokens"]),
    "completion_tokens": int(client.stats["completion_tokens"]),
  }


def _cost(totals: dict[str, float], tokens: dict[str, int], seconds: float):
  """The cost entry of one set: judge counts, tokens, seconds."""
  get = lambda k: int(totals.get(f"judge_{k}", 0))
  return {
    "requests": get("requests"),
    "calls": get("calls"),
    "cache_hits": get("cache_hits"),
    "retries": get("retries"),
    "fallbacks": get("fallbacks"),
    "fallbacks_by_cause": {
      c: get(f"fallbacks_{c}") for c in process.FALLBACK_CAUSES
    },
    **tokens,
    "tokens_reported": any(tokens.values()),
    "seconds": round(seconds, 3),
  }


def score_set(items: Sequence[Item], labels: Sequence[Any]) -> dict:
  """Agreement of one set (skipped completions left out, counted), by
  kind of completion too."""
  kept = [(it, lab) for it, lab in zip(items, labels) if not lab.skipped]
  for it, lab in kept:
    if len(lab.labels) != len(it.truth):
      raise ValueError(
        f"{it.request.record_id}: {len(lab.labels)} judged labels for "
        f"{len(it.truth)} steps"
      )
  truth = [it.truth for it, _ in kept]
  judged = [lab.labels for _, lab in kept]
  by_kind = {}
  kinds = sorted({it.kind for it, _ in kept})
  for kind in kinds:
    pairs = [(it, lab) for it, lab in kept if it.kind == kind]
    entry = judge_agreement.agreement(
      [it.truth for it, _ in pairs], [lab.labels for _, lab in pairs]
    )
    entry.pop("by_position")
    by_kind[kind] = {"completions": len(pairs), **entry}
  fell_back = [(it, lab) for it, lab in zip(items, labels) if lab.fallback_used]
  skipped = [it for it, lab in zip(items, labels) if lab.skipped]
  return {
    "completions": len(items),
    "details": dict(collections.Counter(it.detail for it in items)),
    **judge_agreement.agreement(truth, judged),
    "by_kind": by_kind,
    "fallback_completions": len(fell_back),
    "fallback_steps": sum(len(it.truth) for it, _ in fell_back),
    "skipped_completions": len(skipped),
    "skipped_steps": sum(len(it.truth) for it in skipped),
  }


def run(
  config: Any, workdir: str, *, num: int = DEFAULT_NUM, checkpoint: str = ""
) -> dict[str, Any]:
  """Judges the rationales (and with `checkpoint` the sampled completions),
  writes report.json, report.md and judge_check.png into `workdir`;
  returns the report dict."""
  if num < 1:
    raise InputError(f"--num={num}: judge-check needs at least 1 completion")
  source = make_judge(config)
  client = _client(source)
  out = epath.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  sets: dict[str, list[Item]] = {"rationales": rationale_items(config, num)}
  if checkpoint:
    sets["sampled"] = sampled_items(config, checkpoint, num, str(out))
  report: dict[str, Any] = {
    "judge": _judge_info(config, client),
    "verifier": config.data.eval_verifier,
    "num": num,
    "seed": int(config.seed),
    "checkpoint": checkpoint,
    "sets": {},
  }
  process.judge_totals(source)  # start the counting window here
  all_truth, all_judged, seconds = [], [], 0.0
  for name, items in sets.items():
    before = _tokens(client)
    t0 = time.perf_counter()
    labels = ask(source, items, f"judging {name}")
    elapsed = time.perf_counter() - t0
    seconds += elapsed
    after = _tokens(client)
    tokens = {k: after[k] - before[k] for k in after}
    entry = score_set(items, labels)
    entry["cost"] = _cost(process.judge_totals(source), tokens, elapsed)
    report["sets"][name] = entry
    for it, lab in zip(items, labels):
      if not lab.skipped:
        all_truth.append(it.truth)
        all_judged.append(lab.labels)
  report["all"] = judge_agreement.agreement(all_truth, all_judged)
  report["cost"] = _total_cost(report["sets"], seconds)
  if client is not None:
    client.close()
  report_lib.write(report, str(out))
  return report


def _judge_info(config: Any, client: Any) -> dict[str, Any]:
  j = config.judge
  info = {
    "simulate": j.simulate,
    "label_noise": float(config.rl.label_noise),
    "fallback": j.fallback,
  }
  if client is not None:
    info.update(model=client.model, url=client.url, send_image=j.send_image)
  else:
    info.update(model=f"simulated: {j.simulate} ({config.data.verifier})")
  return info


def _total_cost(sets: dict[str, dict], seconds: float) -> dict[str, Any]:
  costs = [s["cost"] for s in sets.values()]
  total: dict[str, Any] = {
    k: sum(c[k] for c in costs)
    for k in (
      "requests",
      "calls",
      "cache_hits",
      "retries",
      "fallbacks",
      "prompt_tokens",
      "completion_tokens",
    )
  }
  total["fallbacks_by_cause"] = {
    c: sum(x["fallbacks_by_cause"][c] for x in costs)
    for c in process.FALLBACK_CAUSES
  }
  total["tokens_reported"] = any(c["tokens_reported"] for c in costs)
  total["seconds"] = round(seconds, 3)
  steps = sum(s["steps"] + s["skipped_steps"] for s in sets.values())
  total["steps"] = steps
  total["steps_per_second"] = steps / seconds if seconds > 0 else None
  return total


def main(argv: list[str], config: Any, flag_values: Any) -> None:
  logging.set_verbosity(config.log_level)
  num = flag_values.num if flag_values["num"].present else DEFAULT_NUM
  workdir = flag_values.workdir
  report = run(config, workdir, num=num, checkpoint=flag_values.checkpoint)
  print(report_lib.summary_line(report), flush=True)
  print(
    f"wrote {workdir}/{report_lib.REPORT_JSON}, {report_lib.REPORT_MD} and "
    f"{report_lib.PLOT}",
    flush=True,
  )
