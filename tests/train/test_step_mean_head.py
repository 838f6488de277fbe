"""The step-value head that also reads its step's mean hidden state
(`model.step_value_input=last+step_mean`): the causal step mean against a
plain loop, the head's logits against its layers applied by hand, and a
hybrid RL step of the tiny policy whose head labels come from it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax import config_checks, config_utils
from stepjax.data import synthmed
from stepjax.data import tokenizer as tokenizer_lib
from stepjax.models import config as config_lib
from stepjax.models import step_value
from stepjax.rl import losses
from stepjax.sampling import sampler
from stepjax.train import loop, rollout, steps

from . import trainer_utils

# Row 0: a gap before, between and after steps; row 1: a step at column 0
# and two steps with no gap between them; row 2: no step at all.
STEP_IDS = np.array(
  [
    [-1, -1, 0, 0, 0, 1, 1, -1, 2, 2, 2, 2],
    [0, 0, 1, 2, 2, 2, -1, -1, -1, -1, -1, -1],
    [-1] * 12,
  ],
  np.int32,
)


def _loop_step_mean(hidden, ids):
  out = np.zeros_like(hidden)
  for b in range(ids.shape[0]):
    for t in range(ids.shape[1]):
      if ids[b, t] < 0:
        continue
      start = t
      while start > 0 and ids[b, start - 1] == ids[b, t]:
        start -= 1
      out[b, t] = hidden[b, start : t + 1].mean(0)
  return out


def test_step_mean_is_the_causal_mean_over_each_step():
  hidden = np.random.default_rng(0).normal(size=(3, 12, 5)).astype(np.float32)
  got = np.asarray(jax.jit(step_value.step_mean)(hidden, STEP_IDS))
  np.testing.assert_allclose(got, _loop_step_mean(hidden, STEP_IDS), atol=1e-6)
  # At a step's last token: the mean over the whole step.
  np.testing.assert_allclose(got[0, 11], hidden[0, 8:12].mean(0), atol=1e-6)
  np.testing.assert_allclose(got[1, 5], hidden[1, 3:6].mean(0), atol=1e-6)
  assert not got[2].any() and not got[0, :2].any()


def _head(value_input):
  cfg = config_lib.ModelConfig.tiny()
  cfg = cfg.replace(value_input=value_input)
  return cfg, step_value.create(cfg, seed=3)


def test_head_reads_its_token_and_its_steps_mean():
  cfg, head = _head("last+step_mean")
  d = cfg.text.hidden_size
  assert head.fc1.kernel.shape[0] == 2 * d
  rng = np.random.default_rng(1)
  # Non-trivial norm scales, so a swapped norm would show.
  head.norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, d), jnp.float32)
  head.norm_mean.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, d))
  hidden = rng.normal(size=(3, 12, d)).astype(np.float32)
  gd, params = nnx.split(head)
  logits = np.asarray(
    jax.jit(step_value.apply, static_argnums=0)(gd, params, hidden, STEP_IDS)
  )

  def rms(x, scale):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale

  eps = cfg.text.rms_norm_eps
  x = np.concatenate(
    [
      rms(hidden, np.asarray(head.norm.scale[...])),
      rms(
        _loop_step_mean(hidden, STEP_IDS),
        np.asarray(head.norm_mean.scale[...]),
      ),
    ],
    -1,
  )
  w1, b1 = np.asarray(head.fc1.kernel[...]), np.asarray(head.fc1.bias[...])
  w2, b2 = np.asarray(head.fc2.kernel[...]), np.asarray(head.fc2.bias[...])
  h = x @ w1 + b1
  want = ((h / (1 + np.exp(-h))) @ w2 + b2)[..., 0]
  # Outside steps the mean is 0 and RMSNorm of 0 is 0: still defined.
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)

  # Causal within its step: a later token of the step leaves an earlier
  # token's logit alone; an earlier token of the same step moves it; a
  # token of another step does not.
  def logit_after(col, row=0, at=10):
    moved = hidden.copy()
    moved[row, col] += 3.0
    out = step_value.apply(gd, params, moved, STEP_IDS)
    return float(out[row, at])

  assert logit_after(11) == pytest.approx(logits[0, 10], abs=1e-6)
  assert logit_after(8) != pytest.approx(logits[0, 10], abs=1e-3)
  assert logit_after(5) == pytest.approx(logits[0, 10], abs=1e-6)


def test_last_head_ignores_step_ids_and_the_step_mean_head_needs_them():
  cfg, last = _head("last")
  assert not hasattr(last, "norm_mean")
  d = cfg.text.hidden_size
  hidden = np.random.default_rng(2).normal(size=(3, 12, d)).astype(np.float32)
  np.testing.assert_array_equal(last(hidden), last(hidden, STEP_IDS))
  _, mean_head = _head("last+step_mean")
  with pytest.raises(ValueError, match="step_id_BxT"):
    mean_head(hidden)
  with pytest.raises(ValueError, match="value_input"):
    config_lib.ModelConfig.tiny().replace(value_input="mean")
  c = config_utils.default_config()
  c.model.step_value_input = "mean"
  with pytest.raises(config_checks.ConfigError, match="step_value_input"):
    config_checks.check(c)


def _gold_samples(trainer, batch, g):
  """What the sampler would return if the policy wrote each prompt's gold
  chain (row j of a group with its sentence j made filler, so the labels
  differ): the tiny untrained policy's own samples hold no steps."""
  tok = trainer.tokenizer
  rows = []
  for meta, answer in zip(batch["metas"], batch["answers"]):
    gold = synthmed.gold_steps(synthmed.Scene.from_dict(meta["scene"]))
    for j in range(g):
      chain = list(gold)
      chain[j % len(chain)] = "I look at the scan again."
      text = tokenizer_lib.format_completion(chain, answer)
      rows.append([*tok(text, add_special_tokens=False)["input_ids"]])
  eos = tokenizer_lib.tokenizer_info(tok).eos_id
  rows = [[*r, eos] for r in rows]
  c = max(map(len, rows)) + 3
  tokens = np.full((len(rows), c), tokenizer_lib.tokenizer_info(tok).pad_id)
  mask = np.zeros((len(rows), c), np.int32)
  for i, r in enumerate(rows):
    tokens[i, : len(r)] = r
    mask[i, : len(r)] = 1
  logp = -np.ones((len(rows), c), np.float32) * mask
  out = sampler.SampleOutput(
    tokens_BxR=tokens.astype(np.int32),
    logp_BxR=logp,
    sample_logp_BxR=logp,
    mask_BxR=mask,
    lengths_B=mask.sum(1).astype(np.int32),
  )
  prompt = sampler.prepare_inputs(batch, trainer.cfg)
  return rollout.samples_of(prompt, out, group_size=g, mesh=trainer.mesh)


def test_hybrid_rl_step_labels_with_the_step_mean_head(tmp_path):
  """A real rollout of the tiny policy, hybrid source: the logits its
  head-labelled completions were labelled by equal the head applied by
  hand to the policy's hidden states at each step's last token, and the
  value loss on the judged completions trains the step-mean layers."""
  config = trainer_utils.test_config(
    **{
      "mesh.data": 1,
      "sft.steps": 0,
      "train.steps": 1,
      "sampling.group_size": 4,
      "sampling.max_new_tokens": 24,
      "rl.process_source": "hybrid",
      "judge.simulate": "verifier",
      "rl.hybrid_judge_fraction": 0.25,
      "model.step_value_input": "last+step_mean",
      "rl.beta": 0.0,  # no reference forward to compile
    }
  )
  trainer = loop.Trainer(config, str(tmp_path))
  try:
    phase = trainer.phases[-1]
    state = trainer.fresh_state(phase.tx)
    batch = next(iter(phase.dataset))
    seen = []
    head_source = trainer.process_source.value_head
    label_steps = head_source.label_steps

    def recording(requests):
      seen.extend(requests)
      return label_steps(requests)

    head_source.label_steps = recording
    g = config.sampling.group_size
    trainer.sample = lambda *a, **k: _gold_samples(trainer, batch, g)
    update, _ = trainer.rollout(state, batch, step=0)
    _, hidden = steps.forward(trainer.graphs, state.params, update.seq, g)
    step_id_BxL = np.asarray(update.value_labels.step_id_BxL)
    direct = np.asarray(
      step_value.apply(
        trainer.graphs.value, state.value_params, hidden, step_id_BxL
      )
    )
    judged = set(trainer.process_source.last_judged)
    rows = [i for i in range(step_id_BxL.shape[0]) if i not in judged]
    assert len(seen) == len(rows) and rows
    checked = 0
    for req, i in zip(seen, rows):
      end_mask = losses.step_end_mask(step_id_BxL[i : i + 1])
      ends = np.flatnonzero(np.asarray(end_mask)[0])
      k = len(req.step_texts)
      np.testing.assert_allclose(
        req.value_logits[:k], direct[i, ends[:k]], rtol=1e-4, atol=1e-5
      )
      checked += k
    assert checked > 0
    # The value loss on the judged rows' labels trains the step-mean layers.
    labels = update.value_labels
    assert np.asarray(labels.label_mask_B).sum() == len(judged)
    grads = jax.grad(
      lambda v: steps._value_terms(trainer.graphs, v, hidden, labels, 0)[0]
    )(state.value_params)
    assert np.abs(np.asarray(grads["norm_mean"]["scale"][...])).max() > 0
  finally:
    trainer.writer.close()
    trainer.checkpointer.close()
