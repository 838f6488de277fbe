r"""Does a policy read the scan, and does it tell left from right?

For the SynthMed eval records, the gold completion's log-likelihood under
teacher forcing (summed over its tokens) is computed with the record's own
scan and with edited scans. Per question kind the probe reports the mean
change from the own scan:

  - `other_scan` (the next record's scan): a policy that reads the image
    loses likelihood when shown another patient's scan (the chain names
    that scan's modality, organs, counts and sides wrongly);
  - `lesions_swapped` (the same scan re-rendered with the lesions of each
    left/right organ pair exchanged, anatomy and noise unchanged): the gold
    chain is now wrong about which side holds which lesions, so a policy
    that tells the patient's left from right loses likelihood on records
    with lesions in a paired organ. Near 0 there while `other_scan` is
    large means the policy sees lesions but not their side, which no
    reward over its own samples can teach quickly;
  - `lesions_removed` (re-rendered without any lesion): the chain's
    lesions and counts are now wrong, so a policy that sees lesions at all
    loses likelihood on every record with a lesion;
  - `mirrored` (the scan flipped left-right): also moves the anatomy, so
    it mixes seeing the lesions' side with seeing an unusual scan (a heart
    on the wrong side); reported for comparison.

  stepjax probe --checkpoint=runs/synthmed --num=512 \
      --config.data.num_eval=512 --out=runs/synthmed/probe.json

(`--num` records of the eval split, at most `data.num_eval`; the config is
the one the run was trained with, as for `stepjax eval`.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

from stepjax.data import pipeline, sources, synthmed
from stepjax.data import synthmed_render as render_lib
from stepjax.data import synthmed_scene as scene_lib
from stepjax.data.readers import paths
from stepjax.errors import InputError
from stepjax.eval import checkpoints
from stepjax.train import batches, components, steps

# One compiled program per model and batch shape, whichever scans it reads.
_sequence_logp = jax.jit(steps.sequence_logp, static_argnums=(0, 3))

VARIANTS = (
  "own",
  "lesions_swapped",
  "lesions_removed",
  "mirrored",
  "other_scan",
)


def _with_array(record, array_HxW: np.ndarray):
  image = dataclasses.replace(
    record.image, array=np.ascontiguousarray(array_HxW)
  )
  return dataclasses.replace(record, image=image)


def swap_paired_lesions(scene: scene_lib.Scene) -> scene_lib.Scene:
  """The scene with the lesions of each left/right organ pair exchanged
  (offsets mirrored across the organ's centre); all else unchanged."""
  by_name = {o.name: o for o in scene.organs}
  organs = []
  for organ in scene.organs:
    twin = by_name.get(scene_lib.MIRROR.get(organ.name, ""))
    if twin is not None:
      lesions = tuple(
        dataclasses.replace(lesion, dx=-lesion.dx) for lesion in twin.lesions
      )
      organ = dataclasses.replace(organ, lesions=lesions)
    organs.append(organ)
  return dataclasses.replace(scene, organs=tuple(organs))


def remove_lesions(scene: scene_lib.Scene) -> scene_lib.Scene:
  """The scene with no lesion in any organ."""
  organs = tuple(dataclasses.replace(o, lesions=()) for o in scene.organs)
  return dataclasses.replace(scene, organs=organs)


_SCENE_EDITS = {
  "lesions_swapped": swap_paired_lesions,
  "lesions_removed": remove_lesions,
}


def variant_records(records: Sequence[Any], variant: str) -> list[Any]:
  """`records` with their scans edited as `variant` names (see VARIANTS)."""
  if variant == "own":
    return list(records)
  if variant in _SCENE_EDITS:
    edit = _SCENE_EDITS[variant]
    out = []
    for r in records:
      size = np.asarray(r.image.array).shape[0]
      scene = edit(synthmed.scene_of(r))
      out.append(_with_array(r, render_lib.render(scene, size)))
    return out
  if variant == "mirrored":
    return [_with_array(r, np.asarray(r.image.array)[:, ::-1]) for r in records]
  if variant == "other_scan":
    n = len(records)
    return [
      dataclasses.replace(r, image=records[(i + 1) % n].image)
      for i, r in enumerate(records)
    ]
  raise ValueError(f"unknown probe variant {variant!r}; expected {VARIANTS}")


def gold_logp(loaded: Any, records: Sequence[Any], batch_size: int):
  """Summed teacher-forced log-probability of each record's gold
  completion (rationale and answer, as SFT trains on them): float64[N]."""
  config = loaded.config
  opts = pipeline.PipelineOptions.from_config(
    config,
    sft=True,
    model_cfg=loaded.cfg,
    shuffle=False,
    num_epochs=1,
    drop_remainder=False,
    batch_size=batch_size,
  )
  out = []
  dataset = pipeline.make_dataset(
    sources.InMemorySource(records, name="image probe"),
    loaded.tokenizer,
    opts,
    think_tag=config.tokenizer.think_tag,
    shard_index=0,
    shard_count=1,
  )
  for batch in dataset:
    seq = batches.sft_batch(batch, loaded.cfg).seq
    logp = np.asarray(
      _sequence_logp(loaded.graphs, loaded.params, seq, 1)[0], np.float64
    )
    mask = seq.loss_mask_BxL[:, 1:]
    out.append((logp * mask).sum(axis=1))
  return np.concatenate(out)


def probe_records(
  loaded: Any,
  records: Sequence[Any],
  batch_size: int = 32,
  log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
  """The probe's table for `records` (SynthMed records with a scene)."""
  if not records:
    raise InputError("the image probe needs at least one record")
  if any(r.image.array is None or "scene" not in r.meta for r in records):
    raise InputError(
      "the image probe reads SynthMed records (decoded scans with a scene); "
      "use --config.data.dataset=synthmed"
    )
  kinds = np.asarray([r.meta["question_kind"] for r in records])
  logp = {}
  for variant in VARIANTS:
    log(f"probe: {variant} scans ({len(records)} records)")
    logp[variant] = gold_logp(
      loaded, variant_records(records, variant), batch_size
    )
  rows = {}
  for kind in sorted(set(kinds.tolist())) + ["all"]:
    sel = np.ones(len(kinds), bool) if kind == "all" else kinds == kind
    row = {"n": int(sel.sum()), "own_logp": float(logp["own"][sel].mean())}
    for variant in VARIANTS[1:]:
      row[f"{variant}_change"] = float(
        (logp[variant][sel] - logp["own"][sel]).mean()
      )
    rows[kind] = row
  return {"nats_per_completion": rows}


def table(result: dict[str, Any]) -> str:
  """A markdown table of `probe_records`' result."""
  lines = [
    "| question kind | n | own scan | lesions swapped - own | "
    "lesions removed - own | mirrored - own | other scan - own |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for kind, r in result["nats_per_completion"].items():
    lines.append(
      f"| {kind} | {r['n']} | {r['own_logp']:.2f} | "
      f"{r['lesions_swapped_change']:+.2f} | "
      f"{r['lesions_removed_change']:+.2f} | "
      f"{r['mirrored_change']:+.2f} | {r['other_scan_change']:+.2f} |"
    )
  return "\n".join(lines)


def run(
  config: Any, checkpoint: str, num: int, out: str = ""
) -> dict[str, Any]:
  """Loads `checkpoint`, probes the first `num` eval records, prints the
  table and writes the result as JSON to `out` (when given)."""
  if num < 1:
    raise InputError(f"--num={num}: expected at least 1 record")
  loaded = checkpoints.load(config, checkpoint)
  source = components.make_source(loaded.config, "eval")
  records = [source[i] for i in range(min(num, len(source)))]
  batch = int(
    loaded.config.data.eval_batch_size or loaded.config.data.batch_size
  )
  result = probe_records(loaded, records, batch, log=print)
  result["checkpoint"] = checkpoint
  print(table(result), flush=True)
  if out:
    paths.write_json(epath.Path(out), result)
    print(f"wrote {out}", flush=True)
  return result


def main(argv: list[str], config: Any, flag_values: Any) -> None:
  """`stepjax probe --checkpoint=RUN [--num=N] [--out=probe.json]`."""
  num = flag_values.num if flag_values["num"].present else 256
  run(config, flag_values.checkpoint, num, flag_values.out)
