"""windows.py: training metrics averaged over windows of RL steps."""

import json
import pathlib

import pytest

from stepjax.errors import InputError
from stepjax.experiment import grid, windows


def _write(workdir, name, seed, records):
  path = pathlib.Path(grid.run_dir(str(workdir), name, seed))
  path.mkdir(parents=True)
  (path / "metrics.jsonl").write_text(
    "".join(json.dumps(r) + "\n" for r in records)
  )


def _grid(tmp_path):
  sft = {"step": 0, "phase": "sft", "reward": 100.0}
  # seed 0: reward = step; seed 1: reward = 2 * step; kl only on seed 1
  _write(
    tmp_path, "mrpo", 0,
    [sft] + [{"step": t, "phase": "rl", "reward": float(t)} for t in range(6)],
  )  # fmt: skip
  _write(
    tmp_path, "mrpo", 1,
    [{"step": t, "phase": "rl", "reward": 2.0 * t, "kl": 0.5}
     for t in range(6)],
  )  # fmt: skip
  _write(
    tmp_path, "grpo", 0,
    [{"step": t, "phase": "rl", "reward": 1.0, "kl": None} for t in range(4)],
  )  # fmt: skip
  return tmp_path


def test_window_means_by_hand(tmp_path):
  workdir = _grid(tmp_path)
  (workdir / "runs" / "mrpo" / "seed_notes").mkdir()  # not a seed: skipped
  text = windows.table(str(workdir), [(0, 1), (2, 5)], ["reward", "kl"])
  lines = text.strip().splitlines()
  assert lines[0] == "| run | seeds | RL steps | reward | kl |"
  rows = {
    tuple(c.strip() for c in ln.strip("|").split("|")[:3]): ln
    for ln in lines[2:]
  }
  # grpo: steps 0-3 only; kl never finite -> "-"
  assert rows[("grpo", "0", "0-1")].endswith("| 1.000 | - |")
  assert rows[("grpo", "0", "2-5")].endswith("| 1.000 | - |")
  # mrpo window 0-1: seed 0 mean 0.5, seed 1 mean 1.0 -> 0.75; the SFT
  # record (reward 100) is left out; kl from seed 1 only
  assert rows[("mrpo", "0,1", "0-1")].endswith("| 0.750 | 0.500 |")
  # window 2-5: seed 0 mean 3.5, seed 1 mean 7.0 -> 5.25
  assert rows[("mrpo", "0,1", "2-5")].endswith("| 5.250 | 0.500 |")


def test_seed_filter_and_run_order(tmp_path):
  workdir = _grid(tmp_path)
  text = windows.table(str(workdir), [(0, 5)], ["reward"], seeds=[1])
  rows = text.strip().splitlines()[2:]
  assert rows == ["| mrpo | 1 | 0-5 | 5.000 |"]  # grpo has no seed 1

  def names(text):
    return [r.split("|")[1].strip() for r in text.strip().splitlines()[2:]]

  assert names(windows.table(str(workdir), [(0, 5)], ["reward"])) == [
    "grpo",
    "mrpo",
  ]
  ordered = windows.table(
    str(workdir), [(0, 5)], ["reward"], runs=["mrpo", "grpo"]
  )
  assert names(ordered) == ["mrpo", "grpo"]
  with pytest.raises(InputError, match="no run gdpo"):
    windows.table(str(workdir), [(0, 5)], ["reward"], runs=["gdpo"])


@pytest.mark.parametrize("bad", ["0-", "5-2", "a-b", "-3-4", "3"])
def test_bad_windows_say_what_to_write(bad):
  with pytest.raises(InputError, match="FIRST-LAST"):
    windows.parse_windows(bad)


def test_cli_errors_are_one_line(tmp_path, capsys):
  assert windows.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "no runs/ directory" in err
  _grid(tmp_path)
  assert windows.main([str(tmp_path), "--seeds=7"]) == 2
  assert "no run under" in capsys.readouterr().err
  assert windows.main([str(tmp_path), "--windows=0-5", "--metrics=reward"]) == 0
  assert "| mrpo | 0,1 | 0-5 | 3.750 |" in capsys.readouterr().out
