"""Evaluation over several processes: the report covers every process's
slice of the eval split (rows in process order, skip and judge counts
summed), on each process."""

import importlib.util
import json
import pathlib

from stepjax.train import distributed

_HERE = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location(
  "multiprocess_gather", _HERE / "multiprocess_gather.py"
)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def test_one_process_gathers_without_communication():
  assert distributed.all_processes({"a": 1}) == [{"a": 1}]


def test_two_processes_see_every_row_and_the_summed_counts(
  two_processes, tmp_path
):
  two_processes(_HERE / "multiprocess_gather.py", tmp_path)
  parts = [worker.local_part(pid) for pid in range(2)]
  want_rows = parts[0][0] + parts[1][0]
  for pid in range(2):
    got = json.loads((tmp_path / f"proc{pid}.json").read_text("utf-8"))
    assert got["values"] == [{"pid": 0, "x": []}, {"pid": 1, "x": [1]}]
    assert got["rows"] == want_rows
    assert got["skipped"] == {"bad_image": 4, "empty": 1}
    assert got["judged"] == {
      "mode": "judge",
      "model": "m",
      "requests": 5,
      "calls": 7,
      "fallbacks_by_cause": {"timeout": 1, "invalid_reply": 2},
    }
