"""Sources: MRPO json loading, validation, skip accounting and the registry."""

import json
import pickle

import grain
import pytest

from stepjax.data import errors, records, sources


def _write(tmp_path, rows, name="train.json"):
  path = tmp_path / name
  path.write_text(rows if isinstance(rows, str) else json.dumps(rows))
  return str(path)


GOOD = [
  {"image": "imgs/a.png", "problem": "Which organ?", "solution": "liver"},
  {
    "image": "imgs/../imgs/b.png",
    "problem": " How many lesions? ",
    "solution": 3,
    "id": "q-2",
    "rationale": "Two here. One there.",
    "scene": {"organ": "lung"},
    "answer_type": "OPEN",
  },
]


def test_loads_records(tmp_path):
  path = _write(tmp_path, GOOD)
  source = sources.MrpoJsonSource(path)
  assert len(source) == 2 and source.skipped == []
  first, second = source[0], source[1]
  assert isinstance(first, records.Record)
  assert first.id == "train.json#0"
  assert first.image.path == str(tmp_path / "imgs" / "a.png")
  assert first.origin == f"{path}#0" and first.dataset == "mrpo"
  assert second.id == "q-2" and second.answer == "3"
  assert second.question == "How many lesions?"
  assert second.image.path == str(tmp_path / "imgs" / "b.png")
  assert second.rationale == "Two here. One there."
  assert second.meta == {"scene": {"organ": "lung"}, "answer_type": "OPEN"}
  # Grain random-access protocol, and cheap to send to worker processes.
  assert isinstance(source, grain.sources.RandomAccessDataSource)
  assert pickle.loads(pickle.dumps(source))[1] == second


def test_image_root_override(tmp_path):
  """A local json naming images in a bucket: absolute gs:// paths under a
  gs:// image_root; a relative path is still relative to the json file."""
  rows = [dict(GOOD[0], image="gs://bucket/data/imgs/a.png")]
  path = _write(tmp_path, rows)
  source = sources.MrpoJsonSource(path, image_root="gs://bucket/data")
  assert source[0].image.path == "gs://bucket/data/imgs/a.png"
  relative = _write(tmp_path, GOOD[:1])
  with pytest.raises(errors.PathOutsideRootError, match="data.image_root"):
    sources.MrpoJsonSource(relative, image_root="gs://bucket/data")


@pytest.mark.parametrize(
  "text,match",
  [
    ('[{"image": "a.png", "problem": "q", "solu', "truncated"),
    ('[{"image": "a.png", "problem": "q",, "solution": "a"}]', "malformed"),
    ('[{"image": "a.png"} {"image": "b.png"}]', "malformed"),
    ("", "truncated"),
    ('{"image": "a.png", "problem": "q", "solution": "a"}', "JSON list"),
  ],
)
@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_bad_files_always_fail(tmp_path, text, match, mode):
  path = _write(tmp_path, text)
  with pytest.raises(errors.BadRecordError, match=match) as info:
    sources.MrpoJsonSource(path, on_bad_record=mode)
  assert info.value.file == path and path in str(info.value)


def test_missing_file(tmp_path):
  path = str(tmp_path / "absent.json")
  with pytest.raises(errors.BadRecordError, match="data.path") as info:
    sources.MrpoJsonSource(path)
  assert path in str(info.value)


BAD_ROWS = {
  "missing_fields": ({"image": "a.png", "problem": "q"}, "missing field"),
  "empty_question": (
    {"image": "a.png", "problem": "  ", "solution": "a"},
    "empty question",
  ),
  "empty_answer": (
    {"image": "a.png", "problem": "q", "solution": ""},
    "empty answer",
  ),
  "list_answer": (
    {"image": "a.png", "problem": "q", "solution": ["a"]},
    "string or number",
  ),
  "bool_answer": (
    {"image": "a.png", "problem": "q", "solution": True},
    "string or number",
  ),
  "null_question": (
    {"image": "a.png", "problem": None, "solution": "a"},
    "must be a string",
  ),
  "not_an_object": (["a.png", "q", "a"], "expected an object"),
  "empty_image": ({"image": "", "problem": "q", "solution": "a"}, "image"),
  "escaping_path": (
    {"image": "../../etc/x.png", "problem": "q", "solution": "a"},
    "outside the data root",
  ),
  "bad_id": (
    {"image": "a.png", "problem": "q", "solution": "a", "id": [1]},
    "'id'",
  ),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_record_fail_names_file_and_record(tmp_path, case):
  row, match = BAD_ROWS[case]
  path = _write(tmp_path, [GOOD[0], row])
  with pytest.raises(errors.BadRecordError, match=match) as info:
    sources.MrpoJsonSource(path)
  assert info.value.file == path
  assert info.value.record.endswith("#1") or "(#1)" in info.value.record
  assert path in str(info.value) and "#1" in str(info.value)


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_record_skip_counts(tmp_path, case):
  row, match = BAD_ROWS[case]
  path = _write(tmp_path, [GOOD[0], row, GOOD[1]])
  source = sources.MrpoJsonSource(path, on_bad_record="skip")
  assert [r.id for r in source] == ["train.json#0", "q-2"]
  assert len(source.skipped) == 1
  assert match in source.skipped[0].reason
  assert "#1" in source.skipped[0].record


def test_duplicate_ids(tmp_path):
  rows = [dict(GOOD[1], id="x"), dict(GOOD[0], id="y"), dict(GOOD[0], id="x")]
  path = _write(tmp_path, rows)
  with pytest.raises(errors.BadRecordError, match="duplicate id") as info:
    sources.MrpoJsonSource(path)
  assert info.value.record == "x (#2)" and path in str(info.value)
  source = sources.MrpoJsonSource(path, on_bad_record="skip")
  assert [r.id for r in source] == ["x", "y"]
  assert [e.record for e in source.skipped] == ["x (#2)"]


def test_integer_ids_become_strings(tmp_path):
  path = _write(tmp_path, [dict(GOOD[0], id=7), dict(GOOD[0], id="7")])
  source = sources.MrpoJsonSource(path, on_bad_record="skip")
  assert [r.id for r in source] == ["7"] and len(source.skipped) == 1


def test_in_memory_source():
  image = records.ImageRef(path="a.png")
  recs = [
    records.Record(id=i, question="q", answer="a", image=image)
    for i in ("a", "b", "a")
  ]
  with pytest.raises(errors.BadRecordError, match="duplicate id"):
    sources.InMemorySource(recs)
  source = sources.InMemorySource(recs, on_bad_record="skip")
  assert len(source) == 2 and source[1].id == "b"
  assert len(source.skipped) == 1
  with pytest.raises(ValueError, match="data.on_bad_record"):
    sources.InMemorySource(recs, on_bad_record="ignore")


def test_registry(tmp_path):
  path = _write(tmp_path, GOOD)
  source = sources.make_source("mrpo_json", path, on_bad_record="skip")
  assert len(source) == 2
  with pytest.raises(ValueError, match="data.path"):
    sources.make_source("mrpo_json", "")
  with pytest.raises(ValueError, match="not a known source.*mrpo_json"):
    sources.make_source("nope", path)
  recs = [source[0]]
  in_memory = sources.make_source("in_memory", records=recs)
  assert in_memory[0] == source[0]
  with pytest.raises(ValueError, match="leave data.path empty"):
    sources.make_source("synthmed", path)
  assert "synthmed" in sources.source_names()


def test_registry_lazy_import_errors_are_clear():
  sources.register_source(
    "_test_missing", "stepjax.data.no_such_module:Reader", takes_path=False
  )
  with pytest.raises(ValueError, match="no_such_module"):
    sources.make_source("_test_missing")
  sources.register_source(
    "_test_lazy", "stepjax.data.sources:InMemorySource", takes_path=False
  )
  assert len(sources.make_source("_test_lazy", items=[])) == 0


def test_concat_source_reads_parts_in_order():
  def recs(prefix, n):
    return [
      records.Record(
        id=f"{prefix}{i}",
        question="q",
        answer="a",
        image=records.ImageRef(path="a.png"),
      )
      for i in range(n)
    ]

  a = sources.InMemorySource(recs("a", 3))
  b = sources.InMemorySource(recs("b", 0))
  c = sources.InMemorySource(recs("c", 2))
  both = sources.ConcatSource([a, b, c])
  assert len(both) == 5
  assert [both[i].id for i in range(5)] == ["a0", "a1", "a2", "c0", "c1"]
  with pytest.raises(IndexError, match="out of range"):
    both[5]
  assert pickle.loads(pickle.dumps(both))[3].id == "c0"
