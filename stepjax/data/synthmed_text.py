"""SynthMed language: questions, gold steps, and the rule step verifier.

Every step sentence states one claim from a small closed set. `render_claim`
writes a claim as a sentence, `parse_step` reads any sentence back into a
claim (or None), and `verify_step` checks the claim against the scene. A
sentence that parses to no claim (meta-commentary, garbage, empty) is
invalid, and so is a repeated one in `verify_steps`.

Claim kinds and their sentences (organ = "left kidney", "liver", ...; side =
"left" | "right" of the IMAGE unless it says patient):
  appearance (m)       "The bones are bright and the fat is dark."  (CT)
  modality (m, r)      "This is a CT image of the chest."   (r may be "")
  region (r)           "The image shows the chest."
  organ_side (o, s)    "The left kidney is on the image's right."
  convention (s, p)    "The image's right is the patient's left."
  count (o, n)         "The liver has 2 lesions." / "... has no lesions."
  lesion_at (s)        "A lesion is on the image's left."
  largest_at (s)       "The largest lesion is on the image's right."
  largest_in (o)       "The largest lesion is in the spleen."
  larger (o1, o2)      "The left lung lesion is larger than the right lung
                        lesion."
  answer (a)           "So the answer is 2."
Gold chains run modality -> anatomy/laterality -> findings -> conclusion,
3 to 5 sentences, each ending with ".".
"""

from __future__ import annotations

import dataclasses
import re

from stepjax.data import synthmed_scene as scene_lib

MODALITY_TEXT = {"ct": "a CT", "mri": "an MRI", "x-ray": "an X-ray"}
APPEARANCE_TEXT = {
  "ct": "The bones are bright and the fat is dark.",
  "mri": "The fat is bright and the bones are dark.",
  "x-ray": "The image is a projection with soft edges.",
}
_NUMBER_WORDS = {"no": 0, "zero": 0, "one": 1, "two": 2, "three": 3}


@dataclasses.dataclass(frozen=True)
class Claim:
  """One parsed step: a kind and its string arguments."""

  kind: str
  args: tuple[str, ...] = ()


# ---------------------------------------------------------------- writing


def question_text(scene: scene_lib.Scene) -> str:
  q = scene.question
  if q.kind == "count":
    return f"How many lesions are in the {q.organ}?"
  if q.kind == "side":
    return f"Which {q.organ} has a lesion?"
  if q.kind == "larger_side":
    return f"Which {q.organ} has the larger lesion?"
  if q.kind == "organ":
    return "Which organ has a lesion?"
  if q.kind == "largest_organ":
    return "Which organ has the largest lesion?"
  if q.kind == "largest_side":
    return "On which side of the patient is the largest lesion?"
  if q.kind == "modality":
    return "What imaging modality is this?"
  raise ValueError(f"unknown SynthMed question kind {q.kind!r}")


def render_claim(claim: Claim) -> str:
  """The canonical sentence for a claim (inverse of parse_step)."""
  k, a = claim.kind, claim.args
  if k == "appearance":
    return APPEARANCE_TEXT[a[0]]
  if k == "modality":
    tail = f" of the {a[1]}" if a[1] else ""
    return f"This is {MODALITY_TEXT[a[0]]} image{tail}."
  if k == "region":
    return f"The image shows the {a[0]}."
  if k == "organ_side":
    return f"The {a[0]} is on the image's {a[1]}."
  if k == "convention":
    return f"The image's {a[0]} is the patient's {a[1]}."
  if k == "count":
    n = int(a[1])
    lesions = "no lesions" if n == 0 else f"{n} lesion{'s' if n > 1 else ''}"
    return f"The {a[0]} has {lesions}."
  if k == "lesion_at":
    return f"A lesion is on the image's {a[0]}."
  if k == "largest_at":
    return f"The largest lesion is on the image's {a[0]}."
  if k == "largest_in":
    return f"The largest lesion is in the {a[0]}."
  if k == "larger":
    return f"The {a[0]} lesion is larger than the {a[1]} lesion."
  if k == "answer":
    return f"So the answer is {a[0]}."
  raise ValueError(f"unknown SynthMed claim kind {k!r}")


def gold_claims(scene: scene_lib.Scene) -> list[Claim]:
  """The reference reasoning for the scene's question, in clinical order.

  Written from the scene's own facts, so the same function applied to a
  mistaken view of the scene (swapped organs, another modality) gives the
  reasoning a reader holding that mistake would write.
  """
  q = scene.question
  ans = scene_lib.answer(scene)
  modality = Claim("modality", (scene.modality, scene.region))
  done = Claim("answer", (ans,))

  def side(name: str) -> str:
    organ = scene.organ(name)
    return organ.image_side if organ else "left"

  def count(name: str) -> Claim:
    return Claim("count", (name, str(scene_lib.lesion_count(scene, name))))

  if q.kind == "modality":
    return [Claim("appearance", (scene.modality,)), modality, done]
  if q.kind == "count":
    return [
      modality,
      Claim("organ_side", (q.organ, side(q.organ))),
      count(q.organ),
      done,
    ]
  if q.kind == "side":
    hit, other = f"{ans} {q.organ}", f"{_flip(ans)} {q.organ}"
    return [
      modality,
      Claim("organ_side", (hit, side(hit))),
      count(hit),
      count(other),
      done,
    ]
  if q.kind == "larger_side":
    win, lose = f"{ans} {q.organ}", f"{_flip(ans)} {q.organ}"
    return [
      modality,
      Claim("organ_side", (win, side(win))),
      Claim("larger", (win, lose)),
      done,
    ]
  if q.kind == "organ":
    return [
      modality,
      Claim("lesion_at", (side(ans),)),
      Claim("organ_side", (ans, side(ans))),
      count(ans),
      done,
    ]
  if q.kind in ("largest_organ", "largest_side"):
    big = scene_lib.largest_lesion_organ(scene) or ""
    return [
      modality,
      Claim("largest_at", (side(big),)),
      Claim("organ_side", (big, side(big))),
      Claim("largest_in", (big,)),
      done,
    ]
  raise ValueError(f"unknown SynthMed question kind {q.kind!r}")


def gold_steps(scene: scene_lib.Scene) -> list[str]:
  """The gold rationale as sentences (3-5, each ending with '.')."""
  return [render_claim(c) for c in gold_claims(scene)]


FINDINGS_QUESTION = "How many lesions does each organ have?"


def findings_claims(scene: scene_lib.Scene) -> list[Claim]:
  """A findings report of the scan: modality, every organ of the region
  with its lesion count, then the total as the answer. It names where the
  lesions are organ by organ: several lesion-deciding sentences per scan
  where a task rationale has one or two."""
  claims = [Claim("modality", (scene.modality, scene.region))]
  total = 0
  for name in scene_lib.region_organs(scene.region):
    organ = scene.organ(name)
    if organ is None:
      continue
    claims.append(Claim("count", (name, str(len(organ.lesions)))))
    total += len(organ.lesions)
  claims.append(Claim("answer", (str(total),)))
  return claims


def _flip(side: str) -> str:
  return {"left": "right", "right": "left"}.get(side, side)


# ---------------------------------------------------------------- reading

_ORGAN = "(" + "|".join(sorted(scene_lib.ORGANS, key=len, reverse=True)) + ")"
_MODALITY = r"(ct|mri|x-ray|xray|x ray|mr|radiograph)"
_MODALITY_ALIASES = {
  "xray": "x-ray",
  "x ray": "x-ray",
  "radiograph": "x-ray",
  "mr": "mri",
}
_SIDE = "(left|right)"
_NUM = r"(no|zero|one|two|three|\d+)"
_IMG_SIDE = rf"(?:the )?image'?s {_SIDE}(?: side| half)?"
_APPEARANCE = {t.lower().rstrip("."): m for m, t in APPEARANCE_TEXT.items()}

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
  (
    "modality",
    re.compile(
      rf"(?:this|the image|it) is an? {_MODALITY}"
      rf"(?: scan| image)?(?: of the (chest|abdomen))?"
    ),
  ),
  (
    "region",
    re.compile(
      r"(?:the image|this image|it) shows the "
      r"(chest|abdomen)"
    ),
  ),
  ("organ_side", re.compile(rf"the {_ORGAN} is on {_IMG_SIDE}")),
  (
    "convention",
    re.compile(rf"{_IMG_SIDE} is the patient'?s {_SIDE}(?: side)?"),
  ),
  (
    "count",
    re.compile(
      rf"the {_ORGAN} (?:has|shows|contains) {_NUM} "
      r"lesions?"
    ),
  ),
  ("lesion_at", re.compile(rf"(?:a|one) lesion is on {_IMG_SIDE}")),
  ("largest_at", re.compile(rf"the largest lesion is on {_IMG_SIDE}")),
  ("largest_in", re.compile(rf"the largest lesion is in the {_ORGAN}")),
  (
    "larger",
    re.compile(rf"the {_ORGAN} lesion is larger than the {_ORGAN} lesion"),
  ),
  (
    "answer",
    re.compile(
      r"(?:so |therefore |thus )?(?:,\s*)?"
      r"the (?:final )?answer is (.+)"
    ),
  ),
]


def normalize_sentence(sentence: str) -> str:
  """Lower-cases, unifies quotes and spaces, drops the final punctuation."""
  s = sentence.replace("\u2019", "'").replace("\u2018", "'").lower()
  s = re.sub(r"\s+", " ", s).strip()
  return s.rstrip(" .!?").strip()


def normalize_answer(text: str) -> str:
  """Answer comparison key: lower case, letters and digits only."""
  text = text.lower().strip()
  text = _MODALITY_ALIASES.get(text, text)
  if text in _NUMBER_WORDS:
    text = str(_NUMBER_WORDS[text])
  return re.sub(r"[^a-z0-9]+", "", text)


def parse_step(sentence: str) -> Claim | None:
  """The claim a sentence makes, or None when it makes no checkable claim."""
  s = normalize_sentence(sentence)
  if not s:
    return None
  if s in _APPEARANCE:
    return Claim("appearance", (_APPEARANCE[s],))
  for kind, pattern in _PATTERNS:
    m = pattern.fullmatch(s)
    if m is None:
      continue
    groups = tuple(g or "" for g in m.groups())
    if kind == "modality":
      groups = (_MODALITY_ALIASES.get(groups[0], groups[0]), groups[1])
    elif kind == "count":
      n = groups[1]
      groups = (groups[0], str(_NUMBER_WORDS.get(n, n)).lstrip("0") or "0")
    elif kind == "answer":
      groups = (groups[0].strip(),)
      if not groups[0]:
        return None
    return Claim(kind, groups)
  return None


def check_claim(claim: Claim, scene: scene_lib.Scene) -> bool:
  """Whether the claim is true of the scene (and about organs it shows)."""
  k, a = claim.kind, claim.args
  lesioned = [o for o in scene.organs if o.lesions]
  if k == "appearance":
    return a[0] == scene.modality
  if k == "modality":
    return a[0] == scene.modality and a[1] in ("", scene.region)
  if k == "region":
    return a[0] == scene.region
  if k == "organ_side":
    organ = scene.organ(a[0])
    return organ is not None and organ.image_side == a[1]
  if k == "convention":
    return a[0] != a[1]
  if k == "count":
    return scene_lib.lesion_count(scene, a[0]) == int(a[1])
  if k == "lesion_at":
    return any(o.image_side == a[0] for o in lesioned)
  largest = scene_lib.largest_lesion_organ(scene)
  if k == "largest_at":
    return largest is not None and scene.organ(largest).image_side == a[0]
  if k == "largest_in":
    return largest is not None and largest == a[0]
  if k == "larger":
    return scene_lib.is_larger(scene, a[0], a[1])
  if k == "answer":
    return normalize_answer(a[0]) == normalize_answer(scene_lib.answer(scene))
  return False


def verify_step(sentence: str, scene: scene_lib.Scene) -> bool:
  """True iff the sentence parses to a claim that is true of the scene."""
  claim = parse_step(sentence)
  return claim is not None and check_claim(claim, scene)


def verify_steps(sentences: list[str], scene: scene_lib.Scene) -> list[bool]:
  """Per-step validity; a step repeating an earlier claim is invalid."""
  seen: set[Claim] = set()
  out = []
  for sentence in sentences:
    claim = parse_step(sentence)
    ok = claim is not None and claim not in seen and check_claim(claim, scene)
    if claim is not None:
      seen.add(claim)
    out.append(ok)
  return out


# ------------------------------------------------------- aligned validity

# Claim kinds about an organ that bear on a question about that organ.
_ORGAN_KINDS = ("count", "organ_side", "larger")


def _question_organs(scene: scene_lib.Scene, gold: list[Claim]) -> set[str]:
  """Organs the reasoning for the question may talk about: those of the
  gold chain and, for a paired question ("Which kidney ..."), both sides."""
  organs = {a for c in gold for a in c.args if a in scene_lib.ORGANS}
  organ = scene.question.organ
  if organ in scene_lib.ORGANS:
    organs.add(organ)
  elif organ:
    organs |= {f"left {organ}", f"right {organ}"}
  return organs


def is_aligned(claim: Claim, scene: scene_lib.Scene) -> bool:
  """Whether a claim belongs to the reasoning for the scene's question.

  The spec's criterion (MRPO_SPEC.md, "Rewards"): a step is valid when it
  is aligned with the gold reasoning or contributes directly to the
  answer. Aligned here: a claim of the gold chain; the opening modality or
  region claim; the conclusion; or a count / organ-side / comparison claim
  about an organ the question is about. A true claim about anything else
  ("A lesion is on the image's right." before "Which kidney has the larger
  lesion?") is not aligned. Truth is checked separately (`check_claim`).
  """
  if claim.kind in ("modality", "region", "answer"):
    return True
  gold = gold_claims(scene)
  if claim in gold:
    return True
  if claim.kind in _ORGAN_KINDS:
    organs = _question_organs(scene, gold)
    named = [a for a in claim.args if a in scene_lib.ORGANS]
    return bool(named) and all(a in organs for a in named)
  return False


def verify_steps_aligned(
  sentences: list[str], scene: scene_lib.Scene
) -> list[bool]:
  """Per-step validity by the spec's criterion: true of the scene, not a
  repeat, and aligned with the reasoning for the question (`is_aligned`)."""
  truth = verify_steps(sentences, scene)
  out = []
  for sentence, ok in zip(sentences, truth):
    claim = parse_step(sentence) if ok else None
    out.append(bool(ok and claim is not None and is_aligned(claim, scene)))
  return out
