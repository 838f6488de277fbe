"""publish.py: results copied to the docs and spliced into the README."""

import pytest

from stepjax.experiment import publish

README = """# Project

Intro.

## Results

<!-- synthmed-results:start -->
old results
<!-- synthmed-results:end -->

## After
"""


def _results_dir(tmp_path):
  src = tmp_path / "grid"
  (src / "plots").mkdir(parents=True)
  (src / "results.md").write_text("### Experiment grid\n\n| a | b |\n")
  (src / "results.json").write_text("{}\n")
  for name in ("ffp.png", "far.png"):
    (src / "plots" / name).write_bytes(b"\x89PNG fake")
  return src


def test_publish_copies_and_replaces_the_section(tmp_path):
  src = _results_dir(tmp_path)
  readme = tmp_path / "README.md"
  readme.write_text(README)
  dest = tmp_path / "docs" / "results" / "synthmed"
  copied = publish.publish(str(src), str(readme), str(dest))
  assert len(copied) == 4
  assert (dest / "plots" / "ffp.png").read_bytes() == b"\x89PNG fake"
  text = readme.read_text()
  assert "old results" not in text
  assert text.startswith("# Project\n\nIntro.\n\n## Results\n\n")
  assert text.endswith("<!-- synthmed-results:end -->\n\n## After\n")
  assert "### Experiment grid\n\n| a | b |" in text
  assert "](docs/results/synthmed/plots/ffp.png)" in text
  assert "](docs/results/synthmed/plots/far.png)" in text
  # Publishing again gives the same README.
  publish.publish(str(src), str(readme), str(dest))
  assert readme.read_text() == text


def test_missing_markers_fail_with_one_line(tmp_path, capsys):
  src = _results_dir(tmp_path)
  readme = tmp_path / "README.md"
  readme.write_text("# No markers\n")
  with pytest.raises(ValueError, match="lacks the markers"):
    publish.publish(str(src), str(readme), str(tmp_path / "d"))
  code = publish.main([str(src), str(readme), f"--dest={tmp_path / 'd'}"])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1
  assert "<!-- synthmed-results:start -->" in err
  assert readme.read_text() == "# No markers\n"
