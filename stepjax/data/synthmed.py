"""SynthMed: procedural medical VQA whose every reasoning step is checkable.

Public API:
  SynthMedSource(num_records, seed, image_size=112, difficulty=0.3,
                 cascade_rate=0.0)     Grain random-access source of Records
  make_record(seed, index, ...)      record `index`, a pure function of both
  FindingsSource / make_findings_record   scans whose target is a findings
                                     report (every organ's lesion count),
                                     mixed into SFT by sft.findings_scans
  generate(num, seed, ...)           the first `num` records as a list
  finding_labels(meta), token_findings(meta, grid_h, grid_w)
                                     labels of the grounding readout and of
                                     vision pretraining
  scene_of(record) / Scene.from_dict the scene behind a record
  verify_step(sentence, scene), verify_steps(sentences, scene)
  corrupt_step(sentence, scene, kind, rng), CORRUPTIONS
  export_mrpo_json(records, out_dir) PNGs plus an MRPO-format JSON list

Each record is a 2D grayscale scan (CT, MRI or X-ray style) of the chest or
abdomen with 0-3 lesions per organ, an open-ended question (count, side,
organ, largest lesion, modality), a gold rationale of 3-5 templated
sentences (modality -> anatomy/laterality -> findings -> conclusion) and
the answer. meta holds:
  scene         the JSON dict of the scene (the verifier's truth)
  question_kind the question kind
  sft_rationale / sft_answer   what SFT should imitate: the gold rationale
                and answer, or for a cascade record (a `cascade_rate`
                fraction) a rationale with an early wrong step that the later
                steps and the answer follow
  cascade       None, or {"kind": ..., "first_wrong_step": k (0-based)}
The record's own `answer` and `rationale` are always the true ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from stepjax.data import records as records_lib
from stepjax.data import synthmed_corrupt as corrupt_lib
from stepjax.data import synthmed_render as render_lib
from stepjax.data import synthmed_scene as scene_lib
from stepjax.data import synthmed_text as text_lib
from stepjax.errors import InputError

DATASET = "synthmed"
Scene = scene_lib.Scene
CORRUPTIONS = corrupt_lib.CORRUPTIONS


def _as_scene(scene: Scene | Mapping[str, Any]) -> Scene:
  return scene if isinstance(scene, Scene) else Scene.from_dict(scene)


def verify_step(sentence: str, scene: Scene | Mapping[str, Any]) -> bool:
  """Whether one sentence's claim holds in `scene` (a Scene or its dict,
  as stored in `Record.meta["scene"]`)."""
  return text_lib.verify_step(sentence, _as_scene(scene))


def verify_steps(
  sentences: Sequence[str], scene: Scene | Mapping[str, Any]
) -> list[bool]:
  """Per-step validity (repeats invalid); `scene` as in `verify_step`."""
  return text_lib.verify_steps(list(sentences), _as_scene(scene))


def verify_steps_aligned(
  sentences: Sequence[str], scene: Scene | Mapping[str, Any]
) -> list[bool]:
  """Per-step validity by the spec's criterion: true, not repeated, and
  part of the reasoning for the scene's question (see
  `synthmed_text.is_aligned`); `scene` as in `verify_step`."""
  return text_lib.verify_steps_aligned(list(sentences), _as_scene(scene))


VERIFIERS = {"aligned": verify_steps_aligned, "truth": verify_steps}


def step_verifier(name: str):
  """The step verifier `data.verifier` names: aligned | truth."""
  if name not in VERIFIERS:
    raise InputError(
      f"--config.data.verifier={name!r}: expected one of {sorted(VERIFIERS)}"
    )
  return VERIFIERS[name]


corrupt_step = corrupt_lib.corrupt_step
gold_steps = text_lib.gold_steps
render = render_lib.render


def _rngs(
  seed: int, index: int
) -> tuple[np.random.Generator, np.random.Generator]:
  """Independent streams for the scene and the cascade draw of one record.

  Separate streams keep the scene of record i the same whatever the
  cascade_rate, so runs that differ only in cascade_rate see the same scans.
  """
  if seed < 0 or index < 0:
    raise ValueError(
      f"SynthMed seed and index must be >= 0; got seed={seed}, "
      f"index={index} (config.seed)"
    )
  scene_seq, cascade_seq = np.random.SeedSequence([seed, index]).spawn(2)
  return np.random.default_rng(scene_seq), np.random.default_rng(cascade_seq)


def make_scene(seed: int, index: int, difficulty: float = 0.3) -> Scene:
  """The scene of record `index` (no rendering; cheap)."""
  return scene_lib.sample_scene(_rngs(seed, index)[0], difficulty)


def make_record(
  seed: int,
  index: int,
  *,
  image_size: int = 112,
  difficulty: float = 0.3,
  cascade_rate: float = 0.0,
) -> records_lib.Record:
  """Record `index` of the SynthMed set `seed`: a pure function of both."""
  if not 0.0 <= cascade_rate <= 1.0:
    raise InputError(
      "SynthMed cascade_rate must be in [0, 1] (data.cascade_rate); got "
      f"{cascade_rate}"
    )
  scene_rng, cascade_rng = _rngs(seed, index)
  scene = scene_lib.sample_scene(scene_rng, difficulty)
  steps = text_lib.gold_steps(scene)
  answer = scene_lib.answer(scene)
  sft_steps, sft_answer, cascade = steps, answer, None
  if cascade_rng.uniform() < cascade_rate:
    made = corrupt_lib.make_cascade(scene, cascade_rng)
    if made is not None:
      sft_steps, sft_answer = list(made.steps), made.answer
      cascade = {"kind": made.kind, "first_wrong_step": made.first_wrong}
  image_HxW = render_lib.render(scene, image_size)
  return records_lib.Record(
    id=f"synthmed_s{seed}_{index:07d}",
    question=text_lib.question_text(scene),
    answer=answer,
    image=records_lib.ImageRef(array=image_HxW),
    rationale=" ".join(steps),
    dataset=DATASET,
    origin=f"synthmed(seed={seed}, index={index})",
    meta={
      "scene": scene.to_dict(),
      "question_kind": scene.question.kind,
      "sft_rationale": " ".join(sft_steps),
      "sft_answer": sft_answer,
      "cascade": cascade,
    },
  )


def make_findings_record(
  seed: int, index: int, *, image_size: int = 112, difficulty: float = 0.3
) -> records_lib.Record:
  """Scan `index` of set `seed` with a findings report as its target:
  every organ's lesion count, the total as the answer (an SFT record that
  grounds lesions; the scan is the one `make_record(seed, index)` draws)."""
  scene = make_scene(seed, index, difficulty)
  claims = text_lib.findings_claims(scene)
  return records_lib.Record(
    id=f"synthmed_findings_s{seed}_{index:07d}",
    question=text_lib.FINDINGS_QUESTION,
    answer=claims[-1].args[0],
    image=records_lib.ImageRef(array=render_lib.render(scene, image_size)),
    rationale=" ".join(text_lib.render_claim(c) for c in claims[:-1]),
    dataset=DATASET,
    origin=f"synthmed_findings(seed={seed}, index={index})",
    meta={"scene": scene.to_dict(), "question_kind": "findings"},
  )


# What the grounding readout predicts per scan: lesions in each organ.
FINDINGS = tuple(scene_lib.ORGANS)


def finding_labels(meta: Mapping[str, Any] | None) -> tuple[np.ndarray, ...]:
  """(labels float32[F], mask float32[F]) over FINDINGS: 1 where the organ
  has a lesion; mask 1 for the organs the scan shows. A record with no
  SynthMed scene in its meta gets an all-zero mask."""
  labels = np.zeros(len(FINDINGS), np.float32)
  mask = np.zeros(len(FINDINGS), np.float32)
  scene = (meta or {}).get("scene")
  if isinstance(scene, Mapping):
    for organ in scene.get("organs", ()):
      k = FINDINGS.index(organ["name"])
      mask[k] = 1.0
      labels[k] = float(len(organ["lesions"]) > 0)
  return labels, mask


# Per-token labels of vision pretraining (train/vision_pretrain.py): for each
# organ, whether a merged image token shows a lesion of it, then whether it
# shows the organ at all.
TOKEN_FINDINGS = tuple(f"{o} lesion" for o in FINDINGS) + FINDINGS


def token_findings(
  meta: Mapping[str, Any], grid_h: int, grid_w: int, samples: int = 8
) -> np.ndarray:
  """float32[grid_h * grid_w, len(TOKEN_FINDINGS)]: per merged token of a
  scan split into a grid_h x grid_w grid (raster order, the vision tower's
  output order), 1 where the token's cell overlaps a lesion of organ k
  (column k) or organ k itself (column F + k), in the scene's image
  fractions, so it does not depend on the rendered size. A lesion (a disk)
  overlaps a cell exactly when the cell's nearest point is within its
  radius; an organ (a rotated ellipse) is tested on `samples` x `samples`
  points per cell."""
  scene = meta.get("scene") if meta else None
  if not isinstance(scene, Mapping):
    raise ValueError("token_findings needs a SynthMed scene in meta['scene']")
  f = len(FINDINGS)
  out = np.zeros((grid_h * grid_w, len(TOKEN_FINDINGS)), np.float32)
  yy, xx = np.meshgrid(
    (np.arange(grid_h * samples) + 0.5) / (grid_h * samples),
    (np.arange(grid_w * samples) + 0.5) / (grid_w * samples),
    indexing="ij",
  )
  # Cell edges, per token in raster order.
  rows, cols = np.divmod(np.arange(grid_h * grid_w), grid_w)
  y0, y1 = rows / grid_h, (rows + 1) / grid_h
  x0, x1 = cols / grid_w, (cols + 1) / grid_w
  for organ in scene["organs"]:
    k = FINDINGS.index(organ["name"])
    cx, cy, angle = organ["cx"], organ["cy"], organ["angle"]
    cos, sin = np.cos(angle), np.sin(angle)
    u = (xx - cx) * cos + (yy - cy) * sin
    v = -(xx - cx) * sin + (yy - cy) * cos
    inside = (u / organ["rx"]) ** 2 + (v / organ["ry"]) ** 2 <= 1
    cells = inside.reshape(grid_h, samples, grid_w, samples)
    out[:, f + k] = cells.any(axis=(1, 3)).reshape(-1)
    for les in organ["lesions"]:
      px, py = cx + les["dx"], cy + les["dy"]
      gap_x = np.maximum.reduce([x0 - px, np.zeros_like(x0), px - x1])
      gap_y = np.maximum.reduce([y0 - py, np.zeros_like(y0), py - y1])
      hit = gap_x**2 + gap_y**2 < les["radius"] ** 2
      out[:, k] = np.maximum(out[:, k], hit)
  return out


def scene_of(record: records_lib.Record) -> Scene:
  """Rebuilds the scene from a SynthMed record's meta["scene"]."""
  scene = record.meta.get("scene") if record.meta else None
  if not isinstance(scene, dict):
    raise ValueError(
      f"record {record.id} ({record.origin or record.dataset}) has no "
      'SynthMed scene in meta["scene"]; only SynthMed records can be '
      "rule-verified"
    )
  return Scene.from_dict(scene)


class SynthMedSource:
  """Grain random-access source generating SynthMed records lazily.

  Implements grain's RandomAccessDataSource protocol (`__len__`,
  `__getitem__`); record i is rendered on access from (seed, i), so the
  source is cheap to create, pickle and shard.
  """

  def __init__(
    self,
    num_records: int,
    seed: int,
    image_size: int = 112,
    difficulty: float = 0.3,
    cascade_rate: float = 0.0,
  ):
    if num_records < 0:
      raise ValueError(
        f"SynthMedSource num_records must be >= 0; got {num_records}"
      )
    self.num_records = int(num_records)
    self.seed = int(seed)
    self.image_size = int(image_size)
    self.difficulty = float(difficulty)
    self.cascade_rate = float(cascade_rate)

  def __len__(self) -> int:
    return self.num_records

  def __getitem__(self, index: int) -> records_lib.Record:
    index = int(index)
    if not 0 <= index < self.num_records:
      raise IndexError(
        f"SynthMed index {index} out of range for {self.num_records} records"
      )
    return self._record(index)

  def _record(self, index: int) -> records_lib.Record:
    return make_record(
      self.seed,
      index,
      image_size=self.image_size,
      difficulty=self.difficulty,
      cascade_rate=self.cascade_rate,
    )

  def __repr__(self) -> str:
    return (
      f"SynthMedSource(num_records={self.num_records}, seed={self.seed}, "
      f"image_size={self.image_size}, difficulty={self.difficulty}, "
      f"cascade_rate={self.cascade_rate})"
    )


class FindingsSource(SynthMedSource):
  """Grain random-access source of `make_findings_record` records."""

  def __init__(
    self,
    num_records: int,
    seed: int,
    image_size: int = 112,
    difficulty: float = 0.3,
  ):
    super().__init__(num_records, seed, image_size, difficulty)

  def _record(self, index: int) -> records_lib.Record:
    return make_findings_record(
      self.seed, index, image_size=self.image_size, difficulty=self.difficulty
    )

  def __repr__(self) -> str:
    return (
      f"FindingsSource(num_records={self.num_records}, seed={self.seed}, "
      f"image_size={self.image_size}, difficulty={self.difficulty})"
    )


def generate(
  num: int,
  seed: int,
  *,
  image_size: int = 112,
  difficulty: float = 0.3,
  cascade_rate: float = 0.0,
) -> list[records_lib.Record]:
  """Records 0..num-1 of the SynthMed set `seed`."""
  source = SynthMedSource(num, seed, image_size, difficulty, cascade_rate)
  return [source[i] for i in range(num)]


def export_mrpo_json(
  records: list[records_lib.Record],
  out_dir: str,
  *,
  filename: str = "synthmed.json",
) -> str:
  """Writes images/<id>.png and an MRPO-format JSON list; returns its path.

  Each entry: {"image": "images/<id>.png" (relative to the JSON file),
  "problem": question, "solution": answer, "id", "rationale", "scene"}.
  """
  image_dir = os.path.join(out_dir, "images")
  os.makedirs(image_dir, exist_ok=True)
  entries = []
  for rec in records:
    if rec.image.array is None:
      raise ValueError(
        f"record {rec.id}: export_mrpo_json needs decoded images "
        f"(ImageRef.array); got {rec.image.describe()}"
      )
    rel = f"images/{rec.id}.png"
    Image.fromarray(np.asarray(rec.image.array, np.uint8)).save(
      os.path.join(out_dir, rel)
    )
    entry = {
      "image": rel,
      "problem": rec.question,
      "solution": rec.answer,
      "id": rec.id,
      "rationale": rec.rationale,
    }
    if rec.meta and "scene" in rec.meta:
      entry["scene"] = rec.meta["scene"]
    entries.append(entry)
  path = os.path.join(out_dir, filename)
  with open(path, "w") as f:
    json.dump(entries, f, indent=1)
  return path
