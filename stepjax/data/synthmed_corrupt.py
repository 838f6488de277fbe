"""Wrong SynthMed steps on purpose: single-step corruptions and cascades.

`corrupt_step` rewrites one sentence so that it is false of the scene, in
one of four clinically typical ways (CORRUPTIONS): wrong modality, flipped
side, wrong count, wrong organ. Tests use it to check that the verifier
catches each kind; reward tests use it to build partly wrong completions.

`make_cascade` writes a failure cascade for SFT data: the reasoning of a
reader who holds one early mistake (confuses the two sides, mistakes one
organ for another, miscounts, misreads the modality) and then reasons
correctly from it, so later steps and the final answer follow the mistake.
It is the gold chain of a "belief" scene, checked against the true scene.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from stepjax.data import synthmed_scene as scene_lib
from stepjax.data import synthmed_text as text_lib

CORRUPTIONS = ("modality", "side", "count", "organ")
CASCADES = ("laterality", "organ", "count", "modality")

_SIDES = {"left": "right", "right": "left"}


def _flip_organ(name: str) -> str:
  first, _, rest = name.partition(" ")
  return f"{_SIDES[first]} {rest}" if first in _SIDES else name


def _candidates(
  claim: text_lib.Claim, scene: scene_lib.Scene, kind: str
) -> list[text_lib.Claim]:
  """Claims differing from `claim` in the way `kind` names (may be true)."""
  k, a = claim.kind, claim.args
  out: list[tuple[str, ...]] = []
  organs = scene_lib.region_organs(scene.region)
  if kind == "modality":
    if k in ("appearance", "modality"):
      out = [(m,) + a[1:] for m in scene_lib.MODALITIES if m != a[0]]
    elif k == "answer" and a[0] in scene_lib.MODALITIES:
      out = [(m,) for m in scene_lib.MODALITIES if m != a[0]]
  elif kind == "side":
    if k in ("organ_side",):
      out = [(a[0], _SIDES[a[1]]), (_flip_organ(a[0]), a[1])]
    elif k in ("lesion_at", "largest_at"):
      out = [(_SIDES[a[0]],)]
    elif k == "convention":
      out = [(a[0], a[0])]
    elif k in ("count", "largest_in"):
      out = [(_flip_organ(a[0]),) + a[1:]]
    elif k == "larger":
      out = [(a[1], a[0]), (_flip_organ(a[0]), _flip_organ(a[1]))]
    elif k == "answer":
      out = [(_SIDES.get(a[0], _flip_organ(a[0])),)]
  elif kind == "count":
    if k == "count":
      out = [(a[0], str(n)) for n in range(4) if str(n) != a[1]]
    elif k == "answer" and a[0].isdigit():
      out = [(str(n),) for n in range(4) if str(n) != a[0]]
  elif kind == "organ":
    if k in ("organ_side", "count", "largest_in"):
      out = [(o,) + a[1:] for o in organs if o != a[0]]
    elif k == "larger":
      out = [(o, a[1]) for o in organs if o not in a]
    elif k == "answer" and a[0] in scene_lib.ORGANS:
      out = [(o,) for o in organs if o != a[0]]
    elif k == "region":
      out = [(r,) for r in scene_lib.REGIONS if r != a[0]]
  else:
    raise ValueError(
      f"unknown corruption kind {kind!r}; expected one of {CORRUPTIONS}"
    )
  return [text_lib.Claim(k, args) for args in out if args != a]


def corrupt_step(
  sentence: str,
  scene: scene_lib.Scene,
  kind: str,
  rng: np.random.Generator,
) -> str | None:
  """A sentence like `sentence` but false of the scene, or None.

  None when the sentence makes no claim `kind` can change into a false one
  (e.g. a count corruption of the modality sentence).
  """
  claim = text_lib.parse_step(sentence)
  if claim is None:
    return None
  options = _candidates(claim, scene, kind)
  for j in rng.permutation(len(options)):
    if not text_lib.check_claim(options[j], scene):
      return text_lib.render_claim(options[j])
  return None


@dataclasses.dataclass(frozen=True)
class Cascade:
  """A consistent but wrong rationale.

  steps: the sentences; answer: the answer they lead to (not the true one);
  kind: which mistake (CASCADES); first_wrong: 0-based index of the first
  step the verifier rejects.
  """

  steps: tuple[str, ...]
  answer: str
  kind: str
  first_wrong: int


def _beliefs(
  scene: scene_lib.Scene,
) -> list[tuple[str, scene_lib.Scene]]:
  """Mistaken views of the scene, one per plausible single mistake."""
  out = []
  names = [o.name for o in scene.organs]
  for name in names:
    mirror = scene_lib.MIRROR.get(name)
    if mirror in names and name < mirror:
      out.append(
        ("laterality", scene_lib.swap_organ_names(scene, name, mirror))
      )
  for i, a in enumerate(names):
    for b in names[i + 1 :]:
      if scene_lib.MIRROR.get(a) != b:
        out.append(("organ", scene_lib.swap_organ_names(scene, a, b)))
  q = scene.question
  if q.kind == "count":
    organ = scene.organ(q.organ)
    if organ.lesions:
      fewer = dataclasses.replace(organ, lesions=organ.lesions[:-1])
      out.append(("count", _with_organ(scene, fewer)))
    if len(organ.lesions) < 3:
      # A phantom lesion: the same as the organ's first, or a nominal one.
      extra = organ.lesions[:1] or (scene_lib.Lesion(0.0, 0.0, 0.02, True),)
      more = dataclasses.replace(organ, lesions=organ.lesions + extra)
      out.append(("count", _with_organ(scene, more)))
  for m in scene_lib.MODALITIES:
    if m != scene.modality:
      out.append(("modality", dataclasses.replace(scene, modality=m)))
  return out


def _with_organ(
  scene: scene_lib.Scene, organ: scene_lib.Organ
) -> scene_lib.Scene:
  organs = tuple(organ if o.name == organ.name else o for o in scene.organs)
  return dataclasses.replace(scene, organs=organs)


def make_cascade(
  scene: scene_lib.Scene, rng: np.random.Generator
) -> Cascade | None:
  """A failure cascade for the scene, or None if no mistake makes one.

  A mistake qualifies when it changes the final answer and the first step
  it falsifies comes before the conclusion, so that at least the answer
  follows the error. Among qualifying mistakes one is drawn at random.
  """
  true_answer = text_lib.normalize_answer(scene_lib.answer(scene))
  options = []
  for kind, belief in _beliefs(scene):
    belief_answer = scene_lib.answer(belief)
    if belief_answer == "none" or (
      text_lib.normalize_answer(belief_answer) == true_answer
    ):
      continue
    steps = text_lib.gold_steps(belief)
    valid = text_lib.verify_steps(steps, scene)
    if all(valid) or valid[-1]:
      continue
    first_wrong = valid.index(False)
    if first_wrong >= len(steps) - 1:
      continue
    options.append(Cascade(tuple(steps), belief_answer, kind, first_wrong))
  if not options:
    return None
  # Draw the mistake kind first so that kinds with many variants (organ
  # swaps) do not crowd out laterality errors.
  kinds = sorted({c.kind for c in options})
  kind = kinds[int(rng.integers(len(kinds)))]
  pool = [c for c in options if c.kind == kind]
  return pool[int(rng.integers(len(pool)))]
