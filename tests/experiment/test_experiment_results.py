"""results.json, results.md and the plots of a grid, from eval records
written by hand (no training): the numbers, the pairing, determinism."""

import json
import pathlib

import numpy as np
import pytest

from stepjax import config_utils
from stepjax.eval import report as report_lib
from stepjax.experiment import figures, grid, report_md, results, spec

REPO = pathlib.Path(__file__).resolve().parents[2]


def _experiment():
  config = config_utils.load_config_file(
    REPO / "configs" / "experiments" / "example.py", "test"
  )
  config.unlock()
  config.seeds = (0, 1, 2)
  config.eval_every = 1
  return spec.from_config(config)


def _record(i, correct, labels):
  return {
    "id": f"scan{i}",
    "question": "q",
    "gold_answer": "a",
    "answer": "a" if correct else "b",
    "correct": bool(correct),
    "steps": ["s."] * len(labels),
    "step_labels": list(labels),
    "dataset": "synthmed",
  }


def _write_eval(job_dir, name, records):
  report_lib.write(
    report_lib.build_report(records), records,
    str(pathlib.Path(job_dir) / "eval" / name),
  )  # fmt: skip


def _fake_grid(exp, workdir, quality):
  """Eval records per job: each scan's labels come from a per-scan
  difficulty (shared by all methods: correlated records) and the method's
  `quality` (the chance an early step is valid)."""
  for seed in exp.seeds:
    rng = np.random.default_rng(seed)
    difficulty = rng.random(60)
    for name in ["sft", *exp.runs]:
      job_dir = (
        grid.sft_dir(workdir, seed)
        if name == "sft"
        else grid.run_dir(workdir, name, seed)
      )
      method_rng = np.random.default_rng([seed, len(name)])
      records = []
      for i, d in enumerate(difficulty):
        k = 5
        valid = method_rng.random(k) < quality[name] + 0.3 * (1 - d)
        valid[0] = valid[0] or d < 0.3
        labels = [int(v) for v in valid]
        records.append(_record(i, valid.all() or d < 0.2, labels))
      _write_eval(job_dir, "final", list(reversed(records)))  # any order
      if name != "sft":
        _write_eval(job_dir, "rl_step_1", records[:])
        logged = [
          {"step": step, "phase": "rl", "reward": 0.1 * step,
           "judge_completions": 3.0, "judge_share": 0.25,
           "label_head_invalid_steps": 4.0 + step,
           # A step without truly valid steps logs NaN: left out.
           "label_false_invalid_share": [0.2, float("nan")][step]}
          for step in range(2)
        ]  # fmt: skip
        (pathlib.Path(job_dir) / "metrics.jsonl").write_text(
          "".join(json.dumps(r) + "\n" for r in logged)
        )
        grid.record_timing(
          grid.Job(name, seed, job_dir, "", None), 12.0, "trained"
        )


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
  exp = _experiment()
  workdir = str(tmp_path_factory.mktemp("fake_grid"))
  _fake_grid(exp, workdir, {"sft": 0.3, "grpo": 0.4, "mrpo": 0.6})
  return exp, workdir


def test_results_numbers_and_pairing(fake):
  exp, workdir = fake
  res = results.collect(exp, workdir, "stepjax experiment --config=x")
  assert list(res["groups"]) == ["sft", "grpo", "mrpo"]
  mrpo, grpo = res["groups"]["mrpo"], res["groups"]["grpo"]
  # The mean is the mean of the per-seed values; the CI brackets it.
  for g in (mrpo, grpo):
    for m in ("accuracy", "step_validity", "ffp_early", "far"):
      per_seed = [g["per_seed"][str(s)][m] for s in exp.seeds]
      assert g["mean"][m]["value"] == pytest.approx(np.mean(per_seed))
      lo, hi = g["mean"][m]["ci"]
      assert lo <= g["mean"][m]["value"] <= hi
  # Paired differences: a - b of the means, and the relative FFP change.
  (pair,) = res["pairs"]
  assert (pair["a"], pair["b"]) == ("mrpo", "grpo")
  for m in ("accuracy", "step_validity", "ffp_early"):
    want = mrpo["mean"][m]["value"] - grpo["mean"][m]["value"]
    assert pair["diff"][m]["value"] == pytest.approx(want)
  rel = pair["ffp_early_relative"]["value"]
  base = grpo["mean"]["ffp_early"]["value"]
  assert rel == pytest.approx(pair["diff"]["ffp_early"]["value"] / base)
  assert (
    mrpo["mean"]["step_validity"]["value"]
    > grpo["mean"]["step_validity"]["value"]
  )
  change = mrpo["change_from_sft"]["step_validity"]
  assert change["value"] > 0 and change["ci"][0] > 0
  setup = res["experiment"]
  assert setup["eval_scans"] == 60 and setup["seeds"] == [0, 1, 2]
  assert res["periodic"]["mrpo"]["steps"] == [0, 1, 2]
  assert res["judge"]["mrpo"]["judge_completions"] == {
    "total": 6.0,
    "per_step": 3.0,
  }
  # A share has a mean per step, no sum over steps.
  assert res["judge"]["mrpo"]["judge_share"] == {
    "total": None,
    "per_step": 0.25,
  }
  assert res["judge"]["mrpo"]["label_false_invalid_share"] == {
    "total": None,
    "per_step": pytest.approx(0.2),
  }
  # A count: summed over steps (4 + 5), and its mean per step.
  assert res["judge"]["mrpo"]["label_head_invalid_steps"] == {
    "total": 9.0,
    "per_step": 4.5,
  }
  assert mrpo["wall_s"] == {"0": 12.0, "1": 12.0, "2": 12.0}


def test_markdown_is_deterministic_and_complete(fake):
  exp, workdir = fake
  command = "stepjax experiment --config=configs/experiments/example.py:test"
  a = report_md.render(results.collect(exp, workdir, command))
  b = report_md.render(results.collect(exp, workdir, command))
  assert a == b
  for text in (
    "Seeds 0, 1, 2 (3)",
    "60 held-out scans",
    "| mrpo - grpo |",
    "FFP early, relative %",
    "judge_completions (total / per step)",
    "judge_share (mean per step)",
    "label_false_invalid_share (mean per step)",
    " 6.0 / 3.00 | 25.0% |",
    "| SFT start | 0 |",
    command,
  ):
    assert text in a, text


def test_figures_are_written(fake):
  exp, workdir = fake
  res = results.collect(exp, workdir)
  paths = figures.render(res, exp, workdir)
  names = sorted(pathlib.Path(p).name for p in paths)
  assert names == ["curves.png", "far.png", "ffp.png", "periodic_eval.png"]
  for p in paths:
    assert pathlib.Path(p).read_bytes()[:4] == b"\x89PNG"


def test_runs_scored_on_other_scans_fail(fake, tmp_path):
  exp, _ = fake
  _fake_grid(exp, str(tmp_path), {"sft": 0.3, "grpo": 0.4, "mrpo": 0.6})
  path = pathlib.Path(grid.run_dir(str(tmp_path), "grpo", 1))
  records = report_lib.load_records(str(path / "eval" / "final"))
  records[0]["id"] = "another_scan"
  _write_eval(str(path), "final", records)
  with pytest.raises(ValueError, match="run 'grpo' seed 1 was evaluated on"):
    results.collect(exp, str(tmp_path))


def test_moving_average_skips_missing_values():
  values = np.array([1.0, np.nan, 3.0, 5.0])
  np.testing.assert_allclose(
    figures.moving_average(values, 2), [1.0, 1.0, 3.0, 4.0]
  )


def test_run_sizes_name_each_runs_steps_and_prompts():
  from stepjax.experiment import report_md

  def setup(**runs):
    return {
      "group_size": 8,
      "runs": {
        name: {"rl_steps": s, "prompts_per_step": p, "completions": s * p * 8}
        for name, (s, p) in runs.items()
      },
    }

  same = setup(grpo=(150, 12), mrpo=(150, 12))
  assert report_md._run_sizes(same, ["grpo", "mrpo"]) == (
    "Each run: 150 RL steps of 12 prompts x G=8 (14400 completions per "
    "run: equal sampling compute)."
  )
  mixed = setup(long=(450, 4), b12=(150, 12))
  text = report_md._run_sizes(mixed, ["long", "b12"])
  assert "long 450 x 4, b12 150 x 12" in text
  assert "14400 completions per run: equal sampling compute" in text
  unequal = setup(a=(150, 4), b=(150, 12))
  assert "completions per run differ: a 4800, b 14400" in (
    report_md._run_sizes(unequal, ["a", "b"])
  )
