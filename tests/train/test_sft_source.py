"""What SFT imitates: task records' SFT targets plus findings reports."""

import pytest

from stepjax import config_checks, config_utils
from stepjax.train import batches, components, loop


def _config(**sft):
  c = config_utils.default_config()
  c.data.num_train = 4
  c.seed = 2
  for k, v in sft.items():
    setattr(c.sft, k, v)
  return c


def test_without_findings_sft_reads_the_task_records():
  c = _config()
  train = components.make_source(c, "train")
  source = components.sft_source(c, train)
  assert isinstance(source, batches.SftView)
  assert [source[i].id for i in range(4)] == [train[i].id for i in range(4)]


def test_findings_scans_follow_the_task_records_on_their_own_seed():
  c = _config(findings_scans=3)
  train = components.make_source(c, "train")
  source = components.sft_source(c, train)
  assert len(source) == 7
  task = [source[i] for i in range(4)]
  findings = [source[i] for i in range(4, 7)]
  assert [r.id for r in task] == [train[i].id for i in range(4)]
  assert all(r.meta["question_kind"] == "findings" for r in findings)
  assert all(r.meta["question_kind"] != "findings" for r in task)
  # Scans of their own seed: none repeats a training or eval scan.
  evals = components.make_source(c, "eval")
  seen = {r.meta["scene"]["body"] for r in task}
  seen |= {evals[i].meta["scene"]["body"] for i in range(len(evals))}
  assert not seen & {r.meta["scene"]["body"] for r in findings}


def test_findings_need_synthmed(tmp_path):
  c = _config(findings_scans=3)
  c.data.dataset = "vqa_rad"
  c.rl.process_source = "value_head"
  # The trainer's config checks refuse it before any data is read.
  with pytest.raises(config_checks.ConfigError, match="sft.findings_scans"):
    loop.Trainer(c, str(tmp_path))
