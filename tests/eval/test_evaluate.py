"""Evaluation takes a Policy and an EvalTask: no Trainer is built."""

import dataclasses
import importlib.util
import pathlib

import jax
import numpy as np

from stepjax.eval import evaluate
from stepjax.eval import report as report_lib
from stepjax.train import components, policy

_spec = importlib.util.spec_from_file_location(
  "tiny_run", pathlib.Path(__file__).with_name("tiny_run.py")
)
tiny_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_run)


def _fresh_policy(config) -> policy.Policy:
  """A freshly initialised tiny policy (no checkpoint, no Trainer)."""
  tokenizer, tok_info = components.load_tokenizer(config)
  cfg = policy.model_config(config, tok_info)
  graphs, _, _ = policy.abstract(cfg)
  params, _ = policy.init(cfg, seed=0)
  return policy.Policy(graphs, params, tokenizer, tok_info)


def test_a_policy_is_evaluated_without_a_trainer(tmp_path):
  config = tiny_run.config()
  source = components.make_source(config, "eval")
  task = evaluate.EvalTask(config=config, source=source, workdir=str(tmp_path))
  pol = _fresh_policy(config)
  report = evaluate.evaluate(pol, task, "fresh")
  assert report["num_records"] == len(source) == 4
  rows = report_lib.load_records(str(tmp_path / "eval" / "fresh"))
  assert [r["id"] for r in rows] == [source[i].id for i in range(4)]
  # SynthMed records carry their scene: the verifier labels every step.
  assert all(len(r["step_labels"]) == len(r["steps"]) for r in rows)
  # One fixed key, as training evaluates: a second pass decodes the same.
  again = evaluate.score_rows(pol, task)
  assert [r["completion"] for r in again] == [r["completion"] for r in rows]


def test_keys_are_fixed_as_in_training_or_one_per_batch():
  same = lambda a, b: np.array_equal(
    jax.random.key_data(a), jax.random.key_data(b)
  )
  fixed = evaluate.EvalTask(config=tiny_run.config(), source=None)
  assert same(fixed.batch_key(0), fixed.batch_key(3))
  resampled = dataclasses.replace(fixed, resample=True)
  assert not same(resampled.batch_key(0), resampled.batch_key(1))
  assert same(resampled.batch_key(1), resampled.batch_key(1))
  assert not same(fixed.batch_key(0), resampled.batch_key(0))
