"""`stepjax eval`: a run dir and an HF dir evaluated, n samples, compare."""

import importlib.util
import json
import pathlib
import types

import jax
import numpy as np
import pytest

from stepjax.eval import checkpoints
from stepjax.eval import report as report_lib
from stepjax.eval import run as eval_run
from stepjax.train import checkpoint as train_checkpoint
from stepjax.train import loop

_spec = importlib.util.spec_from_file_location(
  "tiny_run", pathlib.Path(__file__).with_name("tiny_run.py")
)
tiny_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_run)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return tiny_run.run_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def evaluated(run_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("eval_out")
  report = eval_run.run(tiny_run.config(), run_dir, str(out))
  return out, report


def test_eval_of_run_dir_equals_the_runs_final_eval(run_dir, evaluated):
  out, report = evaluated
  for name in ("report.json", "records.jsonl", "ffp.png", "far.png"):
    assert (out / name).stat().st_size > 0, name
  # The run logged metrics: training curves are drawn too.
  assert (out / "curves.png").stat().st_size > 0
  assert not list(out.glob(".eval_*"))  # scratch folder removed
  ours = report_lib.load_records(str(out))
  theirs = report_lib.load_records(f"{run_dir}/eval/final")
  assert ours == theirs  # same params, same greedy decoding, same scoring
  assert report["num_records"] == 4
  meta = report_lib.load_report(str(out))["meta"]
  assert meta["checkpoint_kind"] == "orbax"
  assert meta["run_dir"] == run_dir
  assert meta["checkpoint_step"] == 4


def test_n_samples_per_record(run_dir, tmp_path):
  report = eval_run.run(
    tiny_run.config(), run_dir, str(tmp_path), num_samples=2
  )
  rows = report_lib.load_records(str(tmp_path))
  assert report["num_records"] == len(rows) == 8
  ids = [r["id"] for r in rows]
  assert ids[0].endswith("#0") and ids[1].endswith("#1")
  assert ids[0][:-2] == ids[1][:-2]
  assert report["meta"]["samples_per_record"] == 2
  assert report["meta"]["temperature"] == 1.0


def test_compare_prints_one_table_and_plots(run_dir, evaluated, tmp_path):
  out, _ = evaluated
  table = eval_run.compare([run_dir, str(out)], str(tmp_path))
  lines = table.strip().splitlines()
  assert lines[0].startswith("Run") and len(lines) == 3
  assert lines[1].startswith("tiny_run") and "Acc %" in lines[0]
  for name in ("compare.md", "ffp.png", "far.png", "curves.png"):
    assert (tmp_path / name).stat().st_size > 0, name


def test_main_compare_only(run_dir, evaluated, tmp_path, capsys):
  out, _ = evaluated
  flag_values = types.SimpleNamespace(
    checkpoint="",
    compare=[run_dir, str(out)],
    workdir=str(tmp_path),
    split="eval",
    num=16,
  )
  eval_run.main([], tiny_run.config(), _Flags(flag_values))
  assert "FFP early %" in capsys.readouterr().out


def test_errors_name_the_flag(tmp_path):
  with pytest.raises(FileNotFoundError, match="--compare entry"):
    eval_run.find_report(str(tmp_path))
  with pytest.raises(ValueError, match="--split='test'"):
    eval_run.eval_source(tiny_run.config(), "test")
  with pytest.raises(FileNotFoundError, match="--checkpoint="):
    eval_run.run(tiny_run.config(), str(tmp_path / "nope"), str(tmp_path))
  cfg = tiny_run.config(**{"data.dataset": "mrpo_json"})
  with pytest.raises(ValueError, match="data.eval_path"):
    eval_run.eval_source(cfg)


class _Flags:
  """absl-like flag values: attributes plus `flags["name"].present`."""

  def __init__(self, ns, present=()):
    self.__dict__.update(vars(ns))
    self._present = set(present)

  def __getitem__(self, name):
    return types.SimpleNamespace(present=name in self._present)


def test_report_json_is_valid(evaluated):
  out, report = evaluated
  saved = json.loads((out / "report.json").read_text())
  assert saved["accuracy"] == report["accuracy"]
  assert saved["meta"]["checkpoint"] == report["meta"]["checkpoint"]


def test_train_writes_its_plots(run_dir):
  plots_dir = pathlib.Path(run_dir) / "eval" / "plots"
  for name in ("ffp.png", "far.png", "rl_curves.png"):
    png = plots_dir / name
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_a_run_directory_with_its_job_config_is_not_an_hf_directory(tmp_path):
  # `stepjax experiment` writes each run's job config as config.json next
  # to checkpoints/; only a config.json naming a model_type is an HF model.
  run = tmp_path / "run"
  (run / "checkpoints").mkdir(parents=True)
  (run / "config.json").write_text(json.dumps({"seed": 0, "model": {}}))
  loc = checkpoints.locate(str(run))
  assert loc.kind == "orbax" and loc.manager_dir == str(run / "checkpoints")
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
  assert checkpoints.locate(str(hf)).kind == "hf"
  (hf / "config.json").write_text("{not json")
  assert checkpoints.locate(str(hf)).kind == "hf"  # loading names the file


def test_init_from_and_eval_restore_through_one_function(
  run_dir, tmp_path, monkeypatch
):
  calls = []
  restore = train_checkpoint.restore_params

  def spy(path, *args, **kwargs):
    calls.append((path, kwargs.get("flag", "--checkpoint")))
    return restore(path, *args, **kwargs)

  monkeypatch.setattr(train_checkpoint, "restore_params", spy)
  loaded = checkpoints.load(tiny_run.config(), run_dir)
  # init_from takes a run directory, as --checkpoint does.
  trainer = loop.Trainer(tiny_run.config(init_from=run_dir), str(tmp_path))
  state, done, _, _ = trainer.initial_state()
  assert calls == [(run_dir, "--checkpoint"), (run_dir, "--config.init_from")]
  assert done == 0 and loaded.step == 4
  want, got = jax.tree.leaves(loaded.params), jax.tree.leaves(state.params)
  assert len(want) == len(got)
  for a, b in zip(want, got):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_from_another_model_is_refused_before_reading(run_dir):
  with pytest.raises(
    ValueError,
    match=r"--config.init_from=.*model.preset: saved 'tiny', config 'synthmed'",
  ):
    train_checkpoint.restore_params(
      run_dir, {}, model={"preset": "synthmed"}, flag="--config.init_from"
    )
