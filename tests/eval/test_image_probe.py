"""The image probe: scans edited exactly as named, likelihoods that follow
the image, and the table over question kinds."""

import dataclasses
import importlib.util
import pathlib

import numpy as np
import pytest

from stepjax.data import synthmed
from stepjax.data import synthmed_render as render_lib
from stepjax.data import synthmed_scene as scene_lib
from stepjax.errors import InputError
from stepjax.eval import checkpoints, image_probe

_spec = importlib.util.spec_from_file_location(
  "tiny_run", pathlib.Path(__file__).with_name("tiny_run.py")
)
tiny_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_run)


def _records(num=64, seed=3):
  source = synthmed.SynthMedSource(num, seed, 112, 0.3)
  return [source[i] for i in range(num)]


def test_a_record_scan_is_its_scene_rendered():
  # The probe edits scenes and re-renders them: that is only "the same scan
  # but ..." if rendering the record's own scene gives its scan back.
  for r in _records(8):
    own = render_lib.render(synthmed.scene_of(r), 112)
    np.testing.assert_array_equal(own, np.asarray(r.image.array))


def test_swapping_paired_lesions_moves_them_to_the_other_side():
  side = [
    r
    for r in _records(200)
    if r.meta["question_kind"] == "side"
    and "kidney" in r.question
    and r.question.startswith("Which")
  ]
  assert side
  for r in side[:5]:
    scene = synthmed.scene_of(r)
    swapped = image_probe.swap_paired_lesions(scene)
    before = {o.name: len(o.lesions) for o in scene.organs}
    after = {o.name: len(o.lesions) for o in swapped.organs}
    assert after["left kidney"] == before["right kidney"]
    assert after["right kidney"] == before["left kidney"]
    for name in ("liver", "spleen", "left lung", "right lung", "heart"):
      if name in before and scene_lib.MIRROR.get(name) not in before:
        assert after[name] == before[name]
    flipped = {"left": "right", "right": "left"}[r.answer]
    assert scene_lib.answer(swapped) == flipped
    # Anatomy and noise stay: only pixels near lesions change.
    edited = image_probe.variant_records([r], "lesions_swapped")[0]
    changed = np.asarray(edited.image.array) != np.asarray(r.image.array)
    assert 0 < changed.mean() < 0.1


def test_removed_lesions_and_other_scans():
  records = _records(6)
  removed = image_probe.variant_records(records, "lesions_removed")
  for r, e in zip(records, removed):
    scene = synthmed.scene_of(r)
    assert all(not o.lesions for o in image_probe.remove_lesions(scene).organs)
    has_lesion = any(o.lesions for o in scene.organs)
    same = np.array_equal(np.asarray(e.image.array), np.asarray(r.image.array))
    assert same != has_lesion
    assert (e.question, e.answer, e.rationale) == (
      r.question,
      r.answer,
      r.rationale,
    )
  other = image_probe.variant_records(records, "other_scan")
  assert [o.image for o in other] == [
    r.image for r in records[1:] + records[:1]
  ]
  with pytest.raises(ValueError, match="unknown probe variant"):
    image_probe.variant_records(records, "rotated")


def test_likelihoods_follow_the_scan_and_the_table(tmp_path_factory):
  run = tiny_run.run_dir(tmp_path_factory)
  loaded = checkpoints.load(tiny_run.config(), run)
  records = _records(8, seed=5)
  own = image_probe.gold_logp(loaded, records, 4)
  again = image_probe.gold_logp(loaded, records, 8)
  np.testing.assert_allclose(own, again, rtol=1e-5)
  other = image_probe.gold_logp(
    loaded, image_probe.variant_records(records, "other_scan"), 4
  )
  # Even an untrained policy's likelihood depends on its image.
  assert np.all(np.abs(other - own) > 1e-4)
  result = image_probe.probe_records(loaded, records, 4)
  rows = result["nats_per_completion"]
  kinds = [r.meta["question_kind"] for r in records]
  assert rows["all"]["n"] == 8
  assert sum(v["n"] for k, v in rows.items() if k != "all") == 8
  first = kinds[0]
  sel = [i for i, k in enumerate(kinds) if k == first]
  assert rows[first]["own_logp"] == pytest.approx(own[sel].mean(), rel=1e-5)
  assert rows["all"]["other_scan_change"] == pytest.approx(
    (other - own).mean(), rel=1e-4, abs=1e-4
  )
  table = image_probe.table(result)
  assert table.count("\n") == len(rows) + 1 and "| all | 8 |" in table


def test_refuses_records_without_a_scene(tmp_path_factory):
  run = tiny_run.run_dir(tmp_path_factory)
  loaded = checkpoints.load(tiny_run.config(), run)
  r = _records(1)[0]
  bare = dataclasses.replace(r, meta={})
  with pytest.raises(InputError, match="SynthMed records"):
    image_probe.probe_records(loaded, [bare])
  with pytest.raises(InputError, match="at least one record"):
    image_probe.probe_records(loaded, [])
