"""Every experiment config under configs/experiments loads, in full and
:test form, with a base job that passes the config checks."""

import pathlib

import pytest

from stepjax import config_checks, config_utils

EXPERIMENTS = sorted(
  (
    pathlib.Path(__file__).resolve().parents[2] / "configs" / "experiments"
  ).glob("*.py")
)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
@pytest.mark.parametrize("arg", [None, "test"])
def test_experiment_config_loads_and_checks(path, arg):
  grid = config_utils.load_config_file(path, arg)
  config_checks.check(grid.base)
  assert grid.runs and grid.seeds
  names = {name for name, _ in grid.runs}
  assert grid.baseline in names
  for pair in grid.compare:
    assert set(pair) <= names


def test_grounded_grid_trains_sft_on_findings_with_the_readout():
  path = next(p for p in EXPERIMENTS if p.stem == "synthmed_grounded")
  base = config_utils.load_config_file(path).base
  assert base.sft.steps == 1500
  assert base.sft.findings_scans > 0 and base.sft.grounding_weight > 0
  assert base.train.steps == 150  # the default job's RL phase
