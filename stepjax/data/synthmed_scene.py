"""SynthMed scenes: what a synthetic scan contains, sampled from a seed.

A `Scene` is the whole truth about one SynthMed example: modality, body
region, organ layout, the lesions in each organ and the question asked. The
renderer draws it, the text module writes the question, gold steps and the
answer from it, and the step verifier checks claims against it. Scenes are
JSON-serialisable (`to_dict` / `from_dict`) so a record carries its own truth.

Coordinates are fractions of the image side (x to the image's right, y
down), so one scene renders at any size. Radiological convention: the
patient's right is on the image's LEFT (x < 0.5) and the patient's left on
the image's right, which makes laterality a real reasoning step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from stepjax.errors import InputError

MODALITIES = ("ct", "mri", "x-ray")
REGIONS = ("chest", "abdomen")
QUESTION_KINDS = (
  "count",  # How many lesions are in the <organ>?            -> "2"
  "side",  # Which <kidney|lung> has a lesion?               -> "left"
  "larger_side",  # Which <kidney|lung> has the larger lesion? -> "right"
  "organ",  # Which organ has a lesion?                       -> "liver"
  "largest_organ",  # Which organ has the largest lesion?     -> "spleen"
  "largest_side",  # On which side of the patient is ...?    -> "left"
  "modality",  # What imaging modality is this?              -> "ct"
)
_KIND_PROBS = (0.22, 0.13, 0.13, 0.13, 0.13, 0.13, 0.13)

# name -> (region, patient side, cx, cy, rx, ry, angle in radians)
ORGANS: dict[str, tuple[str, str, float, float, float, float, float]] = {
  "right lung": ("chest", "right", 0.30, 0.50, 0.12, 0.21, 0.08),
  "left lung": ("chest", "left", 0.74, 0.51, 0.10, 0.20, -0.08),
  "heart": ("chest", "left", 0.575, 0.40, 0.055, 0.075, 0.5),
  "liver": ("abdomen", "right", 0.32, 0.40, 0.15, 0.11, 0.15),
  "spleen": ("abdomen", "left", 0.73, 0.41, 0.065, 0.085, -0.4),
  "right kidney": ("abdomen", "right", 0.33, 0.66, 0.062, 0.082, 0.25),
  "left kidney": ("abdomen", "left", 0.67, 0.66, 0.062, 0.082, -0.25),
}
PAIRED = {"chest": "lung", "abdomen": "kidney"}
# Organs a laterality error confuses: the one at the mirrored position.
MIRROR = {
  "right lung": "left lung",
  "left lung": "right lung",
  "right kidney": "left kidney",
  "left kidney": "right kidney",
  "liver": "spleen",
  "spleen": "liver",
}

# Lesion size classes: radius as a fraction of the image side. The jitter
# (+-8%) keeps classes apart, so "larger" comparisons are visible.
LESION_RADII = {1: 0.018, 2: 0.027, 3: 0.038}
_RADIUS_JITTER = 0.08
_LESION_GAP = 0.012  # min free space between two lesions, image fraction
# Two lesions are told apart by size only when they differ by this ratio.
SIZE_MARGIN = 1.15

# Gray level (0..1) of each tissue per modality; the renderer paints with
# these and lesions are drawn brighter or darker than their organ.
TISSUE = {
  "ct": {
    "background": 0.0,
    "fat": 0.2,
    "soft": 0.42,
    "bone": 0.95,
    "right lung": 0.06,
    "left lung": 0.06,
    "heart": 0.5,
    "liver": 0.6,
    "spleen": 0.5,
    "right kidney": 0.68,
    "left kidney": 0.68,
  },
  "mri": {
    "background": 0.02,
    "fat": 0.82,
    "soft": 0.3,
    "bone": 0.1,
    "right lung": 0.05,
    "left lung": 0.05,
    "heart": 0.14,
    "liver": 0.27,
    "spleen": 0.5,
    "right kidney": 0.56,
    "left kidney": 0.56,
  },
  "x-ray": {
    "background": 0.05,
    "fat": 0.3,
    "soft": 0.36,
    "bone": 0.8,
    "right lung": 0.12,
    "left lung": 0.12,
    "heart": 0.58,
    "liver": 0.5,
    "spleen": 0.45,
    "right kidney": 0.42,
    "left kidney": 0.42,
  },
}
_P_BRIGHT = {"ct": 0.3, "mri": 0.85, "x-ray": 1.0}


@dataclasses.dataclass(frozen=True)
class Lesion:
  """A round lesion: centre offset from its organ's centre, radius, sign."""

  dx: float
  dy: float
  radius: float
  bright: bool


@dataclasses.dataclass(frozen=True)
class Organ:
  """An elliptic organ (centre, semi-axes, rotation) and its lesions."""

  name: str
  cx: float
  cy: float
  rx: float
  ry: float
  angle: float
  lesions: tuple[Lesion, ...] = ()

  @property
  def image_side(self) -> str:
    """Which half of the image the organ lies in: "left" or "right"."""
    return "left" if self.cx < 0.5 else "right"

  @property
  def max_radius(self) -> float:
    return max((les.radius for les in self.lesions), default=0.0)


@dataclasses.dataclass(frozen=True)
class Question:
  """What is asked: a kind from QUESTION_KINDS and its target.

  organ is an organ name ("left kidney") for count questions, a paired base
  ("kidney", "lung") for side / larger_side and "" otherwise.
  """

  kind: str
  organ: str = ""


@dataclasses.dataclass(frozen=True)
class Scene:
  """Everything true about one SynthMed image and its question."""

  modality: str
  region: str
  organs: tuple[Organ, ...]
  question: Question
  difficulty: float
  render_seed: int
  body: tuple[float, float, float, float]  # cx, cy, rx, ry

  def organ(self, name: str) -> Organ | None:
    for o in self.organs:
      if o.name == name:
        return o
    return None

  def to_dict(self) -> dict[str, Any]:
    """A JSON-serialisable dict that `from_dict` turns back into the scene."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Scene:
    try:
      organs = tuple(
        Organ(
          name=o["name"],
          cx=float(o["cx"]),
          cy=float(o["cy"]),
          rx=float(o["rx"]),
          ry=float(o["ry"]),
          angle=float(o["angle"]),
          lesions=tuple(
            Lesion(
              float(les["dx"]),
              float(les["dy"]),
              float(les["radius"]),
              bool(les["bright"]),
            )
            for les in o["lesions"]
          ),
        )
        for o in d["organs"]
      )
      return cls(
        modality=d["modality"],
        region=d["region"],
        organs=organs,
        question=Question(**d["question"]),
        difficulty=float(d["difficulty"]),
        render_seed=int(d["render_seed"]),
        body=tuple(float(v) for v in d["body"]),
      )
    except (KeyError, TypeError) as e:
      raise ValueError(
        f"not a SynthMed scene dict (missing or bad field {e}); expected "
        "the output of Scene.to_dict()"
      ) from e


def patient_side(organ_name: str) -> str:
  """The patient's side an organ belongs to ("left" / "right")."""
  return ORGANS[organ_name][1]


def region_organs(region: str) -> list[str]:
  return [n for n, spec in ORGANS.items() if spec[0] == region]


# ---------------------------------------------------------------- facts


def lesion_count(scene: Scene, organ_name: str) -> int | None:
  o = scene.organ(organ_name)
  return None if o is None else len(o.lesions)


def largest_lesion_organ(scene: Scene) -> str | None:
  """The organ holding the clearly largest lesion, or None if none/ambiguous.

  Ambiguous means another organ's largest lesion is within SIZE_MARGIN.
  """
  ranked = sorted(
    (o for o in scene.organs if o.lesions),
    key=lambda o: o.max_radius,
    reverse=True,
  )
  if not ranked:
    return None
  if len(ranked) > 1 and ranked[0].max_radius < SIZE_MARGIN * (
    ranked[1].max_radius
  ):
    return None
  return ranked[0].name


def is_larger(scene: Scene, a: str, b: str) -> bool:
  """True when organ a's largest lesion is clearly larger than organ b's."""
  oa, ob = scene.organ(a), scene.organ(b)
  if oa is None or ob is None or a == b or not oa.lesions or not ob.lesions:
    return False
  return oa.max_radius >= SIZE_MARGIN * ob.max_radius


def answer(scene: Scene) -> str:
  """The reference answer to the scene's question (a short string)."""
  q = scene.question
  with_lesions = [o for o in scene.organs if o.lesions]
  if q.kind == "modality":
    return scene.modality
  if q.kind == "count":
    return str(lesion_count(scene, q.organ) or 0)
  if q.kind == "side":
    sides = [patient_side(o.name) for o in with_lesions if q.organ in o.name]
    return sides[0] if len(sides) == 1 else "none"
  if q.kind == "larger_side":
    left, right = f"left {q.organ}", f"right {q.organ}"
    if is_larger(scene, left, right):
      return "left"
    return "right" if is_larger(scene, right, left) else "none"
  if q.kind == "organ":
    return with_lesions[0].name if len(with_lesions) == 1 else "none"
  largest = largest_lesion_organ(scene)
  if q.kind == "largest_organ":
    return largest or "none"
  if q.kind == "largest_side":
    return patient_side(largest) if largest else "none"
  raise ValueError(f"unknown SynthMed question kind {q.kind!r}")


def swap_organ_names(scene: Scene, a: str, b: str) -> Scene:
  """The scene as seen by a reader who mistakes organ a for b and back."""
  rename = {a: b, b: a}
  organs = tuple(
    dataclasses.replace(o, name=rename.get(o.name, o.name))
    for o in scene.organs
  )
  return dataclasses.replace(scene, organs=organs)


# ---------------------------------------------------------------- sampling


def _layout(rng: np.random.Generator, region: str) -> dict[str, Organ]:
  """Jittered organ ellipses for a region, each kept in its image half."""
  shift_y = rng.uniform(-0.02, 0.02)
  scale = rng.uniform(0.92, 1.08)
  organs = {}
  for name in region_organs(region):
    _, _, cx, cy, rx, ry, angle = ORGANS[name]
    rx *= scale * rng.uniform(0.95, 1.05)
    ry *= scale * rng.uniform(0.95, 1.05)
    cx += rng.uniform(-0.012, 0.012)
    cy += shift_y + rng.uniform(-0.012, 0.012)
    angle += rng.uniform(-0.12, 0.12)
    half_w = math.hypot(rx * math.cos(angle), ry * math.sin(angle))
    # Keep every organ (and so its lesions) off the midline.
    if cx < 0.5:
      cx = min(cx, 0.49 - half_w)
    else:
      cx = max(cx, 0.51 + half_w)
    organs[name] = Organ(name, cx, cy, rx, ry, angle)
  return organs


def _place(
  rng: np.random.Generator, organ: Organ, placed: list[Lesion], radius: float
) -> Lesion | None:
  """A lesion position fully inside the organ, apart from the placed ones."""
  ru, rv = organ.rx - radius - 0.004, organ.ry - radius - 0.004
  if ru <= 0 or rv <= 0:
    return None
  cos, sin = math.cos(organ.angle), math.sin(organ.angle)
  for _ in range(40):
    t = rng.uniform(0, 2 * math.pi)
    rho = math.sqrt(rng.uniform(0, 1))
    u, v = ru * rho * math.cos(t), rv * rho * math.sin(t)
    dx, dy = u * cos - v * sin, u * sin + v * cos
    if all(
      math.hypot(dx - p.dx, dy - p.dy) >= radius + p.radius + _LESION_GAP
      for p in placed
    ):
      return Lesion(dx, dy, radius, False)
  return None


def _add_lesions(
  rng: np.random.Generator,
  organ: Organ,
  classes: list[int],
  modality: str,
  *,
  keep_class: bool,
) -> Organ:
  """Places lesions of the given size classes, largest first.

  A lesion that does not fit is shrunk one class at a time, unless
  keep_class (where its size is what the question is about); then dropped.
  """
  tissue = TISSUE[modality][organ.name]
  placed: list[Lesion] = []
  for c in sorted(classes, reverse=True):
    lesion = None
    for cc in [c] if keep_class else range(c, 0, -1):
      radius = LESION_RADII[cc] * rng.uniform(
        1 - _RADIUS_JITTER, 1 + _RADIUS_JITTER
      )
      lesion = _place(rng, organ, placed, radius)
      if lesion is not None:
        break
    if lesion is None:
      continue
    if tissue < 0.3:  # dark organ (lung, heart on MRI): bright nodules only
      bright = True
    else:
      bright = bool(rng.uniform() < _P_BRIGHT[modality])
    placed.append(dataclasses.replace(lesion, bright=bright))
  return dataclasses.replace(organ, lesions=organ.lesions + tuple(placed))


def _pick(rng: np.random.Generator, items: list[Any]) -> Any:
  return items[int(rng.integers(len(items)))]


def sample_scene(rng: np.random.Generator, difficulty: float) -> Scene:
  """Samples one scene; the question kind decides where lesions may go.

  difficulty in [0, 1] raises the chance of distractor lesions in organs the
  question is not about (the renderer also uses it for noise and contrast).
  Distractors never change the answer: they stay out of the organs that
  decide it, and stay smaller than the lesion a "largest" question is about.
  """
  if not 0.0 <= difficulty <= 1.0:
    raise InputError(
      f"SynthMed difficulty must be in [0, 1] (data.difficulty); got "
      f"{difficulty}"
    )
  modality = _pick(rng, list(MODALITIES))
  region = _pick(rng, list(REGIONS))
  kind = QUESTION_KINDS[int(rng.choice(len(QUESTION_KINDS), p=_KIND_PROBS))]
  organs = _layout(rng, region)
  names = list(organs)
  base = PAIRED[region]
  plan: dict[str, list[int]] = {}  # organ -> size classes of its lesions
  keep: set[str] = set()  # organs whose lesion sizes must not shrink
  excluded: set[str] = set()  # organs that must stay free of distractors
  distractor_max = 3
  question = Question(kind)
  p_distract = 0.15 + 0.5 * difficulty

  if kind == "count":
    target = _pick(rng, names)
    question = Question(kind, target)
    n = int(rng.integers(0, 4))
    plan[target] = [int(c) for c in rng.integers(1, 4, size=n)]
    excluded.add(target)
    if target in MIRROR and rng.uniform() < 0.5 + 0.4 * difficulty:
      # A lesion in the mirrored organ is the laterality trap.
      plan[MIRROR[target]] = [
        int(c) for c in rng.integers(1, 4, size=int(rng.integers(1, 3)))
      ]
      excluded.add(MIRROR[target])
  elif kind == "side":
    question = Question(kind, base)
    side = _pick(rng, ["left", "right"])
    plan[f"{side} {base}"] = [
      int(c) for c in rng.integers(1, 4, size=int(rng.integers(1, 4)))
    ]
    excluded |= {f"left {base}", f"right {base}"}
  elif kind == "larger_side":
    question = Question(kind, base)
    win, lose = (("left", "right"), ("right", "left"))[int(rng.integers(2))]
    plan[f"{win} {base}"] = [3] + [2] * int(rng.integers(0, 2))
    plan[f"{lose} {base}"] = [
      int(c) for c in rng.integers(1, 3, size=int(rng.integers(1, 3)))
    ]
    keep.add(f"{win} {base}")
    excluded |= {f"left {base}", f"right {base}"}
    distractor_max = 1
  elif kind == "organ":
    target = _pick(rng, names)
    plan[target] = [
      int(c) for c in rng.integers(1, 4, size=int(rng.integers(1, 3)))
    ]
    excluded |= set(names)
  elif kind in ("largest_organ", "largest_side"):
    target = _pick(rng, names)
    plan[target] = [3] + [1] * int(rng.integers(0, 2))
    keep.add(target)
    excluded.add(target)
    distractor_max = 2
    p_distract = 0.4 + 0.4 * difficulty

  for name in names:
    if name not in excluded and rng.uniform() < p_distract:
      plan[name] = plan.get(name, []) + [
        int(c)
        for c in rng.integers(
          1, distractor_max + 1, size=int(rng.integers(1, 3))
        )
      ]
  for name, classes in plan.items():
    organs[name] = _add_lesions(
      rng, organs[name], classes, modality, keep_class=name in keep
    )
  return Scene(
    modality=modality,
    region=region,
    organs=tuple(organs.values()),
    question=question,
    difficulty=float(difficulty),
    render_seed=int(rng.integers(2**31)),
    body=(
      0.5 + rng.uniform(-0.01, 0.01),
      0.52 + rng.uniform(-0.01, 0.01),
      0.43 * rng.uniform(0.96, 1.04),
      0.36 * rng.uniform(0.96, 1.04),
    ),
  )
