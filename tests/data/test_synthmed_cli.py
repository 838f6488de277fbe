"""`stepjax synthmed`: sample set, contact sheet and speed line."""

import json
import subprocess
import sys
import types

import pytest
from PIL import Image

from stepjax import config_utils
from stepjax.data import synthmed_cli
from stepjax.errors import InputError


def _config(image_size=64):
  config = config_utils.default_config()
  config.data.image_size = image_size
  config.data.cascade_rate = 0.5
  return config


def test_cli_writes_samples_and_contact_sheet(tmp_path, capsys):
  out = tmp_path / "samples"
  flags = types.SimpleNamespace(out=str(out), num=5)
  synthmed_cli.main([], _config(), flags)
  printed = capsys.readouterr().out
  assert str(out) in printed and "examples/s" in printed
  entries = json.loads((out / "synthmed.json").read_text())
  assert len(entries) == 5
  assert all((out / e["image"]).is_file() for e in entries)
  with Image.open(out / "contact_sheet.png") as sheet:
    assert sheet.size[0] > 2 * 224 and sheet.size[1] >= 3 * 224


def test_cli_rejects_bad_arguments(tmp_path):
  """User errors (one `error:` line from stepjax.main), raised before the
  output directory is created (positional args are refused by stepjax.main
  itself: test_cli_errors)."""
  out = tmp_path / "samples"
  flags = types.SimpleNamespace(out=str(out), num=0)
  with pytest.raises(InputError, match="--num"):
    synthmed_cli.main([], _config(), flags)
  flags.num = 2
  with pytest.raises(InputError, match="data.image_size"):
    synthmed_cli.main([], _config(image_size=16), flags)
  assert not out.exists()


def test_cli_default_out_and_entry_point(tmp_path):
  """The real command line, run from a scratch directory."""
  cmd = [sys.executable, "-m", "stepjax", "synthmed", "--num=2"]
  result = subprocess.run(
    cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr
  assert (tmp_path / synthmed_cli.DEFAULT_OUT / "contact_sheet.png").is_file()
