"""Tests for stepjax.eval.report (JSON report, compare) and eval.plots."""

import json
import pathlib
import struct

import numpy as np
import pytest

from stepjax.eval import plots, report


def _record(i, labels, correct, dataset="vqa_rad"):
  return {
    "id": f"q{i}",
    "question": f"question {i}?",
    "gold_answer": "left lung",
    "answer": "left lung" if correct else "right lung",
    "correct": correct,
    "steps": [f"Step {k + 1}." for k in range(len(labels))],
    "step_labels": list(labels),
    "dataset": dataset,
  }


RECORDS = [
  _record(0, [1, 1, 1, 1], True),
  _record(1, [0, 1, 0, 0], False),  # early, FAR 2/3
  _record(2, [1, 0, 1, 1], True, "slake"),  # mid, FAR 0
  _record(3, [1, 1, 1, 0], False, "slake"),  # late, FAR undefined
  _record(4, [], False, "slake"),  # no steps
]


def test_build_report_fields():
  r = report.build_report(RECORDS, meta={"checkpoint": "runs/a"})
  assert r["schema_version"] == report.SCHEMA_VERSION
  assert r["num_records"] == 5
  assert r["accuracy"] == pytest.approx(2 / 5)
  assert r["step_validity"] == pytest.approx(11 / 16)
  assert r["completion_step_validity"] == pytest.approx(
    (1 + 0.25 + 0.75 + 0.75) / 4
  )
  assert r["mean_steps"] == pytest.approx(16 / 5)
  assert r["ffp"] == pytest.approx(
    {"early": 1 / 3, "mid": 1 / 3, "late": 1 / 3, "none": 1 / 4}
  )
  assert r["ffp_counts"] == {
    "early": 1,
    "mid": 1,
    "late": 1,
    "none": 1,
    "no_steps": 1,
  }
  assert r["far_by_ffp"] == pytest.approx(
    {"early": 2 / 3, "mid": 0.0, "late": None}
  )
  assert r["far_counts"] == {"early": 1, "mid": 1, "late": 0, "undefined": 1}
  assert r["far"] == pytest.approx(1 / 3)
  assert r["mean_ffp"] == pytest.approx((0 + 1 / 3 + 1) / 3)
  assert sorted(r["per_dataset"]) == ["slake", "vqa_rad"]
  slake = r["per_dataset"]["slake"]
  assert slake["num_records"] == 3
  assert slake["accuracy"] == pytest.approx(1 / 3)
  assert slake["ffp"]["none"] == 0.0
  assert r["per_dataset"]["vqa_rad"]["ffp"]["early"] == 1.0
  assert r["meta"] == {"checkpoint": "runs/a"}
  # No record's last step states an answer ("Step 4."): nothing checked.
  assert r["answer_vs_chain"] == {
    "checked": 0,
    "contradicted": 0,
    "share": None,
  }
  concluding = [
    {**RECORDS[0], "steps": ["So the answer is left lung."]},
    {**RECORDS[1], "steps": ["So the answer is left lung."]},  # "right lung"
  ]
  for rec in concluding:
    rec["step_labels"] = [1]
  chain = report.build_report(concluding)["answer_vs_chain"]
  assert chain == {"checked": 2, "contradicted": 1, "share": 0.5}
  json.dumps(r)  # serialisable, no NaN
  assert "NaN" not in json.dumps(r)


def test_empty_report():
  r = report.build_report([])
  assert r["num_records"] == 0 and r["accuracy"] is None
  assert r["per_dataset"] == {}


def test_documented_schema_covers_every_field():
  import pathlib

  doc = (
    pathlib.Path(__file__).resolve().parents[2] / "docs" / "eval_report.md"
  ).read_text()
  r = report.build_report(RECORDS)
  for key in r:
    assert f"`{key}`" in doc, key
  for key in r["per_dataset"]["slake"]:
    assert f"`{key}`" in doc, key
  for key in report.RECORD_KEYS:
    assert f"`{key}`" in doc, key


def test_write_and_load_roundtrip(tmp_path):
  r = report.build_report(RECORDS)
  rp, jp = report.write(r, RECORDS, str(tmp_path / "eval"))
  assert rp.endswith("report.json") and jp.endswith("records.jsonl")
  assert report.load_report(str(tmp_path / "eval")) == r
  assert report.load_records(str(tmp_path / "eval")) == RECORDS


def test_load_report_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no evaluation report"):
    report.load_report(str(tmp_path))
  (tmp_path / "report.json").write_text(json.dumps({"schema_version": 99}))
  with pytest.raises(ValueError, match="schema_version 99"):
    report.load_report(str(tmp_path))
  (tmp_path / "records.jsonl").write_text('{"id": 1}\nnot json\n')
  with pytest.raises(ValueError, match="records.jsonl:2"):
    report.load_records(str(tmp_path))


@pytest.mark.parametrize(
  "change, match",
  [
    ({"correct": "yes"}, "'correct' must be"),
    ({"step_labels": [1, 2, 0, 0]}, "0/1"),
    ({"steps": ["only one"]}, "1 steps but 4 step_labels"),
    ({"dataset": None}, "'dataset' must be"),
  ],
)
def test_bad_record_names_index_and_id(change, match):
  bad = {**RECORDS[1], **change}
  with pytest.raises(ValueError, match=f"record 1 \\(id='q1'\\).*{match}"):
    report.build_report([RECORDS[0], bad])


def test_missing_key():
  bad = dict(RECORDS[0])
  del bad["answer"]
  with pytest.raises(
    ValueError, match="record 0 .*missing keys \\['answer'\\]"
  ):
    report.build_report([bad])


def _reports():
  a = report.build_report(RECORDS)
  b = report.build_report(RECORDS[:2])
  return {"grpo": a, "mrpo": b}


def test_compare_markdown():
  table = report.compare(_reports(), per_dataset=True)
  lines = table.splitlines()
  assert lines[0].startswith("| Run | N | Acc % | Valid % | Steps |")
  assert lines[0].endswith("| slake acc % | vqa_rad acc % |")
  assert lines[1].startswith("|---|---:|")
  assert lines[2].startswith("| grpo | 5 | 40.0 | 68.8 | 3.20 | 33.3 |")
  # mrpo has no slake records: a dash, not a crash.
  assert lines[3].startswith("| mrpo | 2 | 50.0 |")
  assert lines[3].endswith("| - | 50.0 |")
  assert len({line.count("|") for line in lines}) == 1


def test_compare_plain_aligned():
  table = report.compare(_reports(), fmt="plain")
  lines = table.splitlines()
  assert lines[0].split()[:3] == ["Run", "N", "Acc"]
  assert lines[1].split()[:3] == ["grpo", "5", "40.0"]
  assert len(lines[1]) == len(lines[2])
  with pytest.raises(ValueError, match="fmt must be"):
    report.compare(_reports(), fmt="html")


def _png_size(path):
  data = open(path, "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n", path
  assert data[12:16] == b"IHDR"
  width, height = struct.unpack(">II", data[16:24])
  return len(data), width, height


def _curves():
  def run(offset):
    recs = [
      {"step": s, "phase": "sft", "loss": 2.0 - 0.1 * s} for s in range(5)
    ]
    recs += [
      {
        "step": s,
        "phase": "rl",
        "reward": offset + 0.02 * s,
        "accuracy": 0.3 + offset + 0.01 * s,
        "step_validity": 0.5,
      }
      for s in range(5, 40)
    ]
    recs += [{"step": 40, "phase": "eval", "accuracy": 0.6 + offset}]
    return recs

  return {"grpo": run(0.0), "mrpo": run(0.1)}


def test_plots_render_valid_pngs(tmp_path):
  reports = _reports()
  paths = plots.render_all(reports, str(tmp_path / "plots"), _curves())
  assert [p.rsplit("/", 1)[1] for p in paths] == [
    "ffp.png",
    "far.png",
    "curves.png",
  ]
  single = plots.plot_curves(
    {"mrpo": _curves()["mrpo"]},
    str(tmp_path / "one.png"),
    metrics=("reward", "accuracy", "not_logged"),
  )
  for path in paths + [single]:
    nbytes, width, height = _png_size(path)
    assert 10_000 < nbytes < 1_000_000, (path, nbytes)
    assert 400 < width < 3000 and 300 < height < 3000, (path, width, height)


def test_plot_errors(tmp_path):
  with pytest.raises(ValueError, match="no reports"):
    plots.plot_ffp({}, str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="available metrics: \\['loss'\\]"):
    plots.plot_curves(
      {"a": [{"step": 0, "phase": "sft", "loss": 1.0}]},
      str(tmp_path / "x.png"),
    )


def test_smoothed_curves_average_over_the_window(tmp_path):
  mean, std = plots._moving_stats(np.array([0.0, 2.0, 4.0, np.nan, 8.0]), 2)
  np.testing.assert_allclose(mean, [0.0, 1.0, 3.0, 4.0, 8.0])
  np.testing.assert_allclose(std, [0.0, 1.0, 1.0, 0.0, 0.0])
  records = [
    {"step": s, "phase": "rl" if s >= 3 else "sft", "reward": float(s)}
    for s in range(10)
  ]
  path = plots.plot_smoothed_curves(records, str(tmp_path / "c.png"))
  assert pathlib.Path(path).read_bytes()[:4] == b"\x89PNG"
  with pytest.raises(ValueError, match="no rl records"):
    plots.plot_smoothed_curves(records[:3], str(tmp_path / "d.png"))
