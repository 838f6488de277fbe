"""SynthMed: determinism, step truth, corruptions, cascades, laterality."""

import dataclasses
import json
import pickle
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from stepjax.data import records, synthmed
from stepjax.data import synthmed_corrupt as corrupt_lib
from stepjax.data import synthmed_render as render_lib
from stepjax.data import synthmed_scene as scene_lib
from stepjax.data import synthmed_text as text_lib

_FAST = settings(max_examples=40, deadline=None)


def _split_steps(text):
  """The spec's step splitter: sentence ends followed by whitespace."""
  return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _scene(seed, index=0, difficulty=0.3):
  return synthmed.make_scene(seed, index, difficulty)


def test_record_is_a_pure_function_of_seed_and_index():
  a = synthmed.SynthMedSource(6, seed=3, cascade_rate=0.5)
  b = synthmed.SynthMedSource(6, seed=3, cascade_rate=0.5)
  for i in (5, 0, 2):  # any access order
    ra, rb = a[i], b[i]
    assert ra.id == rb.id and ra.question == rb.question
    assert ra.meta == rb.meta and ra.rationale == rb.rationale
    np.testing.assert_array_equal(ra.image.array, rb.image.array)
  other = synthmed.SynthMedSource(6, seed=4)
  assert any(
    not np.array_equal(a[i].image.array, other[i].image.array) for i in range(6)
  )
  # The cascade draw does not change the scan or the question.
  plain = synthmed.SynthMedSource(6, seed=3, cascade_rate=0.0)
  for i in range(6):
    np.testing.assert_array_equal(a[i].image.array, plain[i].image.array)
    assert a[i].meta["scene"] == plain[i].meta["scene"]


def test_source_protocol_and_record_contract():
  source = synthmed.SynthMedSource(4, seed=0, image_size=64)
  assert len(source) == 4
  rec = source[1]
  assert isinstance(rec, records.Record)
  assert rec.dataset == "synthmed" and rec.id and rec.question and rec.answer
  assert rec.image.array.dtype == np.uint8
  assert rec.image.array.shape == (64, 64)
  json.dumps(dict(rec.meta))  # JSON-serialisable
  assert synthmed.scene_of(rec).to_dict() == rec.meta["scene"]
  assert pickle.loads(pickle.dumps(source))[1].id == rec.id
  with pytest.raises(IndexError, match="out of range"):
    source[4]
  assert len({r.id for r in synthmed.generate(5, seed=0)}) == 5


def test_source_works_in_a_grain_pipeline():
  grain = pytest.importorskip("grain")
  source = synthmed.SynthMedSource(8, seed=0, image_size=32)
  ds = grain.MapDataset.source(source).shuffle(seed=1).map(lambda r: r.id)
  assert sorted(ds[i] for i in range(len(ds))) == sorted(
    source[i].id for i in range(8)
  )


def test_bad_knobs_name_the_flag():
  with pytest.raises(ValueError, match="data.difficulty"):
    synthmed.make_scene(0, 0, difficulty=1.5)
  with pytest.raises(ValueError, match="data.cascade_rate"):
    synthmed.make_record(0, 0, cascade_rate=-0.1)
  with pytest.raises(ValueError, match="data.image_size"):
    render_lib.render(_scene(0), 8)


@_FAST
@given(seed=st.integers(0, 10_000), difficulty=st.floats(0.0, 1.0))
def test_gold_steps_verify_and_answer_follows(seed, difficulty):
  scene = _scene(seed, difficulty=difficulty)
  steps = text_lib.gold_steps(scene)
  assert 3 <= len(steps) <= 6
  assert all(s.endswith(".") for s in steps)
  assert synthmed.verify_steps(steps, scene) == [True] * len(steps)
  answer = scene_lib.answer(scene)
  assert answer != "none"
  assert steps[-1] == f"So the answer is {answer}."
  # The spec's splitter recovers exactly these steps from the rationale.
  assert _split_steps(" ".join(steps)) == steps
  # The verifier works from the JSON scene alone.
  rebuilt = scene_lib.Scene.from_dict(json.loads(json.dumps(scene.to_dict())))
  assert rebuilt == scene


def test_gold_verifies_for_many_seeds_and_all_question_kinds():
  kinds = set()
  for i in range(300):
    scene = _scene(7, i)
    kinds.add(scene.question.kind)
    steps = text_lib.gold_steps(scene)
    assert all(synthmed.verify_steps(steps, scene)), (i, steps)
  assert kinds == set(scene_lib.QUESTION_KINDS)


# Which gold claim each corruption kind must always be able to falsify.
_MUST_CORRUPT = {
  "modality": {"modality", "appearance"},
  "side": {"organ_side", "lesion_at", "largest_at", "larger"},
  "count": {"count"},
  "organ": {"organ_side", "largest_in"},
}


@_FAST
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(synthmed.CORRUPTIONS))
def test_every_corruption_kind_verifies_invalid(seed, kind):
  scene = _scene(seed)
  rng = np.random.default_rng(seed)
  for step in text_lib.gold_steps(scene):
    wrong = synthmed.corrupt_step(step, scene, kind, rng)
    claim = text_lib.parse_step(step)
    if claim.kind in _MUST_CORRUPT[kind]:
      assert wrong is not None, (kind, step)
    if wrong is not None:
      assert wrong != step
      assert not synthmed.verify_step(wrong, scene), (kind, step, wrong)
      assert text_lib.parse_step(wrong) is not None  # still a real claim


def test_corruption_examples():
  scene = _scene(0, 0)  # "Which kidney has a lesion?" -> right
  rng = np.random.default_rng(0)
  steps = text_lib.gold_steps(scene)
  assert steps[1] == "The right kidney is on the image's left."
  flipped = synthmed.corrupt_step(steps[1], scene, "side", rng)
  assert flipped in (
    "The right kidney is on the image's right.",
    "The left kidney is on the image's left.",
  )
  wrong_modality = synthmed.corrupt_step(steps[0], scene, "modality", rng)
  assert wrong_modality.startswith("This is a") and "X-ray" not in (
    wrong_modality
  )
  assert synthmed.corrupt_step(steps[0], scene, "count", rng) is None
  with pytest.raises(ValueError, match="corruption kind"):
    synthmed.corrupt_step(steps[0], scene, "color", rng)


@pytest.mark.parametrize(
  "sentence",
  [
    "",
    "   ",
    ".",
    "Let me think step by step.",
    "I will now look at the image carefully.",
    "asdf qwe zxcv.",
    "The answer is",
    "So the answer is .",
    "The kidney is interesting.",
    "The liver has many lesions.",
  ],
)
def test_meta_empty_and_garbage_sentences_are_invalid(sentence):
  for i in range(5):
    assert not synthmed.verify_step(sentence, _scene(1, i))


def test_parser_accepts_paraphrase_and_rejects_repeats():
  scene = _scene(0, 0)  # X-ray abdomen; right kidney has 1 lesion
  assert synthmed.verify_step("this is an x-ray of the abdomen", scene)
  assert synthmed.verify_step("The right kidney contains one lesion!", scene)
  assert synthmed.verify_step("The image's right is the patient's left.", scene)
  assert not synthmed.verify_step(
    "The image\u2019s right is the patient\u2019s right.", scene
  )
  assert synthmed.verify_step("The lung has 0 lesions.", scene) is False
  assert not synthmed.verify_step("The left lung has no lesions.", scene)
  steps = text_lib.gold_steps(scene)
  assert synthmed.verify_steps(steps + [steps[2]], scene)[-1] is False


def _lesion_diff(scene, organ_name, size=112):
  """Pixels a lesion in organ_name changes, vs the same scan without it."""
  organ = scene.organ(organ_name)
  lesion = scene_lib.Lesion(0.0, 0.0, 0.03, True)
  organs = tuple(
    dataclasses.replace(o, lesions=(lesion,) if o.name == organ_name else ())
    for o in scene.organs
  )
  clean = dataclasses.replace(
    scene, organs=tuple(dataclasses.replace(o, lesions=()) for o in organs)
  )
  with_lesion = dataclasses.replace(scene, organs=organs)
  assert organ is not None
  return np.abs(
    render_lib.render(with_lesion, size).astype(np.float32)
    - render_lib.render(clean, size).astype(np.float32)
  )


@settings(max_examples=12, deadline=None)
@given(
  seed=st.integers(0, 10_000), modality=st.sampled_from(["ct", "mri", "x-ray"])
)
def test_patient_left_is_on_the_image_right(seed, modality):
  scene = _scene(seed)
  scene = dataclasses.replace(scene, modality=modality)
  base = scene_lib.PAIRED[scene.region]
  for side, half in (("left", "right"), ("right", "left")):
    diff = _lesion_diff(scene, f"{side} {base}")
    w = diff.shape[1]
    left_half, right_half = diff[:, : w // 2].sum(), diff[:, w // 2 :].sum()
    assert max(left_half, right_half) > 50 * 255 * 0.05  # visibly drawn
    if half == "right":
      assert right_half > 20 * left_half
    else:
      assert left_half > 20 * right_half


def test_side_answers_match_image_halves():
  """On real records the lesion side in pixels matches the answer."""
  checked = 0
  for i in range(200):
    scene = _scene(11, i)
    if scene.question.kind != "side":
      continue
    organ = f"{scene_lib.answer(scene)} {scene.question.organ}"
    clean = dataclasses.replace(
      scene,
      organs=tuple(dataclasses.replace(o, lesions=()) for o in scene.organs),
    )
    only = dataclasses.replace(
      scene,
      organs=tuple(
        o if o.name == organ else dataclasses.replace(o, lesions=())
        for o in scene.organs
      ),
    )
    diff = np.abs(
      render_lib.render(only).astype(int) - render_lib.render(clean)
    )
    xs = np.nonzero(diff.sum(0))[0]
    image_half = "right" if xs.mean() > diff.shape[1] / 2 else "left"
    assert image_half != scene_lib.answer(scene)  # mirrored, always
    checked += 1
  assert checked >= 10


def test_cascade_records_are_wrong_early_and_consistent():
  recs = synthmed.generate(60, seed=5, image_size=32, cascade_rate=1.0)
  cascades = [r for r in recs if r.meta["cascade"]]
  assert len(cascades) >= 55
  kinds = set()
  for r in cascades:
    scene = synthmed.scene_of(r)
    info = r.meta["cascade"]
    kinds.add(info["kind"])
    steps = _split_steps(r.meta["sft_rationale"])
    valid = synthmed.verify_steps(steps, scene)
    k = info["first_wrong_step"]
    assert k < len(steps) - 1  # wrong before the conclusion
    assert valid[:k] == [True] * k and valid[k] is False
    assert valid[-1] is False
    assert r.meta["sft_answer"] != r.answer
    assert steps[-1] == f"So the answer is {r.meta['sft_answer']}."
    assert r.rationale == " ".join(text_lib.gold_steps(scene))
  assert {"laterality", "organ"} <= kinds
  plain = synthmed.generate(30, seed=5, image_size=32, cascade_rate=0.0)
  assert all(r.meta["cascade"] is None for r in plain)
  assert all(r.meta["sft_rationale"] == r.rationale for r in plain)
  assert all(r.meta["sft_answer"] == r.answer for r in plain)


def test_cascade_rate_is_respected():
  recs = synthmed.generate(200, seed=2, image_size=32, cascade_rate=0.3)
  rate = np.mean([r.meta["cascade"] is not None for r in recs])
  assert 0.18 < rate < 0.42


def test_make_cascade_laterality_example():
  scene = _scene(0, 0)  # "Which kidney has a lesion?" -> right
  for s in range(20):
    c = corrupt_lib.make_cascade(scene, np.random.default_rng(s))
    if c.kind == "laterality":
      assert c.answer == "left" and c.first_wrong == 1
      break
  else:
    pytest.fail("no laterality cascade drawn in 20 tries")


def test_export_round_trip(tmp_path):
  recs = synthmed.generate(4, seed=9, image_size=48)
  path = synthmed.export_mrpo_json(recs, str(tmp_path))
  with open(path) as f:
    entries = json.load(f)
  assert len(entries) == 4
  for rec, entry in zip(recs, entries, strict=True):
    assert {"image", "problem", "solution"} <= set(entry)
    assert entry["problem"] == rec.question
    assert entry["solution"] == rec.answer
    assert entry["id"] == rec.id and entry["rationale"] == rec.rationale
    assert not entry["image"].startswith("/")
    with Image.open(tmp_path / entry["image"]) as im:
      np.testing.assert_array_equal(np.asarray(im), rec.image.array)
    scene = scene_lib.Scene.from_dict(entry["scene"])
    assert all(synthmed.verify_steps(_split_steps(entry["rationale"]), scene))


def test_scene_from_bad_dict_names_the_problem():
  with pytest.raises(ValueError, match="SynthMed scene"):
    scene_lib.Scene.from_dict({"modality": "ct"})
  bare = records.Record("x1", "q", "a", records.ImageRef(path="a.png"))
  with pytest.raises(ValueError, match="record x1"):
    synthmed.scene_of(bare)


def test_difficulty_lowers_contrast_but_lesions_stay_visible():
  scene = _scene(3)
  for difficulty in (0.0, 1.0):
    hard = dataclasses.replace(scene, difficulty=difficulty)
    organ = next(o.name for o in hard.organs if o.name in scene_lib.MIRROR)
    diff = _lesion_diff(hard, organ)
    assert diff.max() > 25  # gray levels


def _scene_with_question(kind, start=0):
  for i in range(start, start + 2000):
    scene = synthmed.make_scene(0, i)
    if scene.question.kind == kind:
      return scene
  raise AssertionError(f"no {kind} question in 2000 scenes")


def test_aligned_verifier_accepts_gold_for_every_question_kind():
  for kind in scene_lib.QUESTION_KINDS:
    scene = _scene_with_question(kind)
    gold = synthmed.gold_steps(scene)
    assert synthmed.verify_steps_aligned(gold, scene) == [True] * len(gold)


def test_aligned_verifier_rejects_true_claims_off_the_question():
  # "Which kidney has the larger lesion?": true facts about the spleen or
  # a lesion's side are not part of its reasoning; the truth verifier
  # accepts them, the aligned one does not.
  scene = _scene_with_question("larger_side")
  assert scene.region == "abdomen" or scene.question.organ == "lung"
  other = next(
    o.name for o in scene.organs if scene.question.organ not in o.name
  )
  side = scene.organ(other).image_side
  off_topic = f"The {other} is on the image's {side}."
  assert synthmed.verify_steps([off_topic], scene) == [True]
  assert synthmed.verify_steps_aligned([off_topic], scene) == [False]
  # Both sides of the question's organ pair are on topic when true.
  organ = scene.question.organ
  for name in (f"left {organ}", f"right {organ}"):
    claim = f"The {name} is on the image's {scene.organ(name).image_side}."
    assert synthmed.verify_steps_aligned([claim], scene) == [True]
  # Untrue claims stay invalid.
  left = scene.organ(f"left {organ}").image_side
  wrong = {"left": "right", "right": "left"}[left]
  untrue = f"The left {organ} is on the image's {wrong}."
  assert synthmed.verify_steps_aligned([untrue], scene) == [False]


def test_step_verifier_by_name():
  assert synthmed.step_verifier("aligned") is synthmed.verify_steps_aligned
  assert synthmed.step_verifier("truth") is synthmed.verify_steps
  with pytest.raises(ValueError, match="data.verifier"):
    synthmed.step_verifier("judge")


def test_findings_report_counts_every_organ_of_the_scan():
  source = synthmed.FindingsSource(40, seed=5, image_size=64)
  assert len(source) == 40
  with pytest.raises(IndexError, match="out of range"):
    source[40]
  for i in range(40):
    rec = source[i]
    scene = synthmed.scene_of(rec)
    # The same scan the task set draws at (seed, index).
    assert scene == synthmed.make_scene(5, i)
    np.testing.assert_array_equal(rec.image.array, render_lib.render(scene, 64))
    steps = _split_steps(rec.rationale)
    assert text_lib.verify_steps(steps, scene) == [True] * len(steps)
    organs = [o.name for o in scene.organs]
    assert len(steps) == 1 + len(organs)  # modality, then one per organ
    for name, step in zip(organs, steps[1:]):
      assert step.startswith(f"The {name} has ")
    assert rec.answer == str(sum(len(o.lesions) for o in scene.organs))
    assert rec.meta["question_kind"] == "findings"
  # A changed lesion count is caught by the verifier.
  rec = source[0]
  scene = synthmed.scene_of(rec)
  name = scene.organs[-1].name
  n = len(scene.organs[-1].lesions)
  wrong = text_lib.render_claim(text_lib.Claim("count", (name, str(n + 1))))
  assert not text_lib.verify_step(wrong, scene)
