"""The value probe: features gathered at the right tokens, probes that find
a planted signal where it is (and not where it is not), the scores' shares."""

import importlib.util
import pathlib

import numpy as np
import pytest

from stepjax.data import synthmed
from stepjax.errors import InputError
from stepjax.eval import checkpoints
from stepjax.experiment import config_io, value_probe
from stepjax.models import step_value

_spec = importlib.util.spec_from_file_location(
  "tiny_run", pathlib.Path(__file__).parent.parent / "eval" / "tiny_run.py"
)
tiny_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_run)


def test_truth_vector_counts_each_organs_lesions():
  source = synthmed.SynthMedSource(16, 5, 112, 0.3)
  for i in range(16):
    scene = synthmed.scene_of(source[i])
    u = value_probe.truth_vector(scene)
    names = list(value_probe.scene_lib.ORGANS)
    for organ in scene.organs:
      j = names.index(organ.name)
      assert u[j] == len(organ.lesions) and u[len(names) + j] == 1.0
    assert u[2 * len(names) :].sum() == 1.0  # one modality
    absent = set(names) - {o.name for o in scene.organs}
    for name in absent:
      assert (
        u[names.index(name)] == 0 and u[len(names) + names.index(name)] == 0
      )


def _planted(num_prompts=600, steps_per_prompt=2, seed=0):
  """Steps whose label is whether some token of the scan has feature 0 >
  1 (as a lesion shows in whichever token holds it): readable from the
  image tokens and the truth, not from the hidden state (noise)."""
  rng = np.random.default_rng(seed)
  m, e, d = 4, 3, 6
  images = rng.normal(size=(num_prompts, m, e)).astype(np.float32)
  label_N = (images[:, :, 0].max(1) > 1.0).astype(np.float32)
  s = num_prompts * steps_per_prompt
  image_S = np.repeat(np.arange(num_prompts), steps_per_prompt).astype(np.int32)
  valid_S = label_N[image_S]
  return value_probe.StepFeatures(
    hidden_SxD=rng.normal(size=(s, d)).astype(np.float32),
    step_mean_SxD=rng.normal(size=(s, d)).astype(np.float32),
    head_logit_S=np.full(s, np.nan, np.float32),
    image_S=image_S,
    truth_SxU=np.stack([valid_S, rng.normal(size=s)], 1).astype(np.float32),
    valid_S=valid_S,
    true_S=np.ones(s, np.float32),
    prompt_S=image_S.copy(),
    images_NxMxE=images,
    image_valid_NxM=np.ones((num_prompts, m), bool),
  )


def test_probes_find_a_planted_signal_only_where_it_is():
  result = value_probe.run_probes(_planted(), max_steps=600)
  probes = result["probes"]
  assert "run's head" not in probes  # no head logits (NaN)
  assert probes["hidden"]["bce"] > 0.6  # noise: near the base rate
  assert probes["constant"]["bce"] > 0.6
  assert probes["hidden+step_mean"]["bce"] > 0.6  # noise too
  for name in (
    "hidden+pool",
    "hidden+attn",
    "hidden+truth",
    "hidden+step_mean+truth",
  ):
    assert probes[name]["bce"] < 0.35, name
    assert probes[name]["accuracy"] > 0.85, name
  # The split keeps every step of a prompt on one side.
  steps = result["steps"]
  assert steps["fit"] + steps["val"] + steps["test"] == 600 * 2
  # The curves refit on nested shares of the fit prompts, the last all.
  truth = result["curve"]["hidden+truth"]
  sizes = [p["fit_steps"] for p in truth]
  assert sizes == sorted(sizes) and sizes[-1] == steps["fit"] and sizes[0] > 0
  assert truth[-1]["bce"] < 0.35 and result["curve"]["hidden"][-1]["bce"] > 0.6
  assert "hidden+truth by fit steps" in value_probe.table(result)


def test_scores_split_invalid_steps_by_kind():
  f = _planted(num_prompts=2, steps_per_prompt=3)
  f.valid_S = np.array([1, 1, 0, 0, 0, 0], np.float32)
  f.true_S = np.array([1, 1, 0, 0, 1, 1], np.float32)  # 2 false, 2 true
  logits = np.array([2.0, -1.0, -3.0, 1.0, -2.0, 4.0])
  r = value_probe.scores(logits, f, np.arange(6))
  assert r["accuracy"] == pytest.approx(3 / 6)
  assert r["valid_kept"] == pytest.approx(1 / 2)
  assert r["invalid_flagged"] == pytest.approx(2 / 4)
  assert r["false_claims_flagged"] == pytest.approx(1 / 2)
  assert r["true_but_invalid_flagged"] == pytest.approx(1 / 2)
  want = np.mean(np.logaddexp(0, logits) - logits * f.valid_S)
  assert r["bce"] == pytest.approx(want)


def test_collect_on_a_tiny_run(tmp_path_factory):
  run = tiny_run.run_dir(tmp_path_factory)
  config = tiny_run.config()
  loaded = checkpoints.load(config, run)
  source = synthmed.SynthMedSource(4, 11, config.data.image_size, 0.3)
  records = [source[i] for i in range(4)]
  f = value_probe.collect(loaded, records, group_size=2, batch_prompts=2)
  assert value_probe.split_prompts(f.prompt_S, 0.5)[1].size
  s = len(f.valid_S)
  assert s > 0 and f.hidden_SxD.shape == (s, loaded.cfg.text.hidden_size)
  assert f.images_NxMxE.shape[0] == 4 and set(f.prompt_S) <= {0, 1, 2, 3}
  np.testing.assert_array_equal(f.image_S, f.prompt_S)  # one scan each
  assert set(np.unique(f.valid_S)) <= {0.0, 1.0}
  assert f.step_mean_SxD.shape == f.hidden_SxD.shape
  # Steps span several tokens: their mean is not the last token's state.
  assert not np.allclose(f.step_mean_SxD, f.hidden_SxD)
  # The head's logit was read at the same token as the hidden state.
  head = step_value.apply(
    loaded.graphs.value, loaded.value_params, f.hidden_SxD[None]
  )[0]
  np.testing.assert_allclose(head, f.head_logit_S, rtol=1e-4, atol=1e-4)
  # A truth-valid step is never one the verifier rejects for falsehood
  # only: the verifier's valid steps are all true.
  assert np.all(f.true_S[f.valid_S == 1] == 1)


def test_bad_input_is_one_line(tmp_path, capsys):
  with pytest.raises(InputError, match="--prompts"):
    value_probe.run("unused", prompts=1)
  assert value_probe.main(["/nonexistent/run", "--prompts=4"]) == 2
  # A run directory with its config but no checkpoint: one line, exit 2.
  config_io.write(tiny_run.config(), str(tmp_path))
  capsys.readouterr()
  assert value_probe.main([str(tmp_path), "--prompts=4"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "checkpoint" in err
  # It names the positional RUN_DIR, not an option the probe does not have.
  assert f"RUN_DIR={tmp_path}" in err and "--checkpoint" not in err
  assert "\n" not in err and "Traceback" not in err
