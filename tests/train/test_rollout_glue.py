"""The glue of an RL step, token by token: known completions of real
SynthMed prompts -> `rollout.samples_of` (their sequences, on the device)
-> `rollout.score` -> `rollout.update_batch` -> `steps.prepare_update`
(advantages, on the device) -> `batches.micro_batches`, as
`Trainer.rollout` runs it (no model).

Expected values are computed here from the spec (MRPO_SPEC.md) with plain
loops: step spans from how the test builds each text, labels from which
sentences it made invalid, rewards, group advantages and the step penalty.
Shapes: P prompts, G samples each, B = P * G rows, T prompt columns, C
completion columns, L = T + C.
"""

import dataclasses
import math
import types

import jax
import numpy as np
import pytest

from stepjax import image_slots, sequences
from stepjax.data import pipeline, synthmed
from stepjax.data import tokenizer as tokenizer_lib
from stepjax.rl import advantages, process
from stepjax.sampling import sampler
from stepjax.train import batches, components, policy, rollout
from stepjax.train import steps as train_steps

from . import trainer_utils

G = 2
WRONG = "zzz"  # shares no word with any reference: R_ans = 0 exactly
FILLERS = [
  f"I look at the scan again, pass {w}."
  for w in (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu "
    "xi omicron pi rho sigma tau upsilon"
  ).split()
]


def _completion(steps, answer):
  """(text, step char spans, eos-terminated ids) of a well-formed completion.

  The spans are where the test put each sentence, not `rl.steps`' split.
  """
  text = tokenizer_lib.format_completion(steps, answer)
  spans, pos = [], len("<think>")
  for s in steps:
    spans.append((pos, pos + len(s)))
    pos += len(s) + 1
  assert text[spans[-1][1] :].startswith("</think>")
  return text, spans


def _rows(gold):
  """B = 4 (steps, valid flags, answer) rows for two prompts' gold steps.

  Row 0: an invalid step 3, right answer (R_ans = 1 > tau: no shaping).
  Row 1: 20 steps, the first and last invalid, wrong answer.
  Row 2: an invalid step 2 of 4, wrong answer.
  Row 3: one invalid step (K = 1), wrong answer.
  """
  g0, g1 = gold
  row0 = [*g0[0][:2], FILLERS[0], *g0[0][2:]]
  row1 = [FILLERS[0], *g0[0][:4], *FILLERS[1:16]]
  row2 = [g1[0][0], FILLERS[0], *g1[0][1:3]]
  row3 = [FILLERS[0]]
  out = []
  for steps, answer in (
    (row0, g0[1]),
    (row1, WRONG),
    (row2, WRONG),
    (row3, WRONG),
  ):
    out.append((steps, [int(s not in FILLERS) for s in steps], answer))
  assert len(out[1][0]) == 20
  return out


def _token_steps(tok, text, spans):
  """Expected 0-based step of each text token (-1 outside), from offsets."""
  enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
  out = []
  for a, b in enc["offset_mapping"]:
    k = -1
    for j, (s, e) in enumerate(spans):
      if b > s and a < e:
        k = j
        break
    out.append(k)
  return enc["input_ids"], out


def _length_reward(k, k_min=4, k_max=10):
  if k < k_min:
    return -(k_min - k) / k_min
  if k > k_max:
    return -(k - k_max) / k_max
  return 0.0


def _group_advantages(r):
  out = []
  for start in range(0, len(r), G):
    grp = r[start : start + G]
    mean = sum(grp) / G
    std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (G - 1))
    out += [(x - mean) / (std + 1e-4) for x in grp]
  return out


@pytest.fixture(scope="module")
def setup():
  config = trainer_utils.test_config(
    **{"rewards.format_weight": 0.5, "sampling.group_size": G}
  )
  tok = tokenizer_lib.load_tokenizer("")
  info = tokenizer_lib.tokenizer_info(tok)
  cfg = policy.model_config(config, info)
  opts = pipeline.PipelineOptions.from_config(
    config, shuffle=False, num_epochs=1
  )
  batch = next(
    iter(
      pipeline.make_dataset(
        components.make_source(config, "train"), tok, opts, think_tag="think"
      )
    )
  )
  assert len(batch["ids"]) == 2  # P = 2 prompts
  # Prompts of different lengths: the left padding is exercised.
  assert len(set(batch["prompt_mask_BxT"].sum(1).tolist())) == 2
  assert (batch["prompt_mask_BxT"][:, 0] == 0).all()
  gold = []
  for meta, answer in zip(batch["metas"], batch["answers"]):
    steps = synthmed.gold_steps(synthmed.Scene.from_dict(meta["scene"]))
    gold.append((steps[:-1], answer))  # without "So the answer is X."
  rows = []
  for steps, valid, answer in _rows(gold):
    text, spans = _completion(steps, answer)
    ids, step_of = _token_steps(tok, text, spans)
    rows.append(
      dict(
        steps=steps,
        valid=valid,
        answer=answer,
        ids=[*ids, info.eos_id],
        step_of=[*step_of, -1],  # eos is in no step
      )
    )
  c = max(len(r["ids"]) for r in rows) + 5  # every row ends in padding
  b = len(rows)
  tokens_BxC = np.full((b, c), info.pad_id, np.int32)
  mask_BxC = np.zeros((b, c), np.int32)
  logp_BxC = np.zeros((b, c), np.float32)
  for i, r in enumerate(rows):
    n = len(r["ids"])
    tokens_BxC[i, :n] = r["ids"]
    mask_BxC[i, :n] = 1
    logp_BxC[i, :n] = -(1.0 + i + np.arange(n) / 1000.0)  # all distinct
  lengths_B = mask_BxC.sum(1)
  return dict(
    config=config,
    tok=tok,
    cfg=cfg,
    batch=batch,
    rows=rows,
    tokens_BxC=tokens_BxC,
    mask_BxC=mask_BxC,
    logp_BxC=logp_BxC,
    lengths_B=lengths_B,
  )


def _build(s, prompts=slice(None)):
  """The update batch of `prompts` (a slice of P) as Trainer.rollout makes
  it, with the verifier's labels; also returns the `Scored`."""
  whole = s["batch"]
  num = len(whole["ids"])
  arrays = {k: v for k, v in whole.items() if hasattr(v, "shape")}
  # Arrays by prompt, image slots through image_prompt_I (renumbered).
  batch = image_slots.take_prompts(arrays, np.arange(num)[prompts], num)
  for k, v in whole.items():
    if k not in arrays:
      batch[k] = v[prompts] if isinstance(v, list) else v
  p = len(batch["ids"])
  rows = slice(
    (prompts.start or 0) * G, (prompts.start or 0) * G + p * G
  )  # the G rows of each prompt
  tokens, mask = s["tokens_BxC"][rows], s["mask_BxC"][rows]
  logp = s["logp_BxC"][rows]
  # What the sampler would return for these completions.
  out = sampler.SampleOutput(
    tokens_BxR=tokens,
    logp_BxR=logp,
    sample_logp_BxR=logp,
    mask_BxR=mask,
    lengths_B=mask.sum(1).astype(np.int32),
  )
  prompt = sampler.prepare_inputs(batch, s["cfg"])
  samples = rollout.samples_of(prompt, out, group_size=G)
  np.testing.assert_array_equal(samples.tokens_BxR, tokens)
  scored = rollout.score(
    samples.tokens_BxR,
    samples.lengths_B,
    batches.examples(batch),
    tokenizer=s["tok"],
    source=process.VerifierSource(synthmed.verify_steps),
    config=s["config"],
  )
  label_mask = scored.has_labels_B.astype(np.int32)
  update = rollout.update_batch(samples, scored, label_mask)
  adv = train_steps.advantage_options(
    s["config"], rollout.reward_weights(scored)
  )
  prepare = jax.jit(
    lambda batch, inputs: train_steps.prepare_update(
      None, batch, inputs, graphs=None, adv=adv, beta=0.0
    )
  )
  prepared = prepare(update, rollout.advantage_inputs(scored))
  assert prepared.ref_logp_BxL is None  # beta = 0
  # As Trainer.rollout does; host copies to compare.
  update = jax.device_get(prepared.apply(update))
  return update, scored, np.asarray(prepared.adv_B)


@pytest.fixture(scope="module")
def built(setup):
  return _build(setup)


def _expected_advantages(s):
  """A_i from the spec's rewards, computed from what the test built."""
  w = s["config"].rewards
  totals = []
  for i, r in enumerate(s["rows"]):
    ref = s["batch"]["answers"][i // G]
    r_ans = 1.0 if r["answer"] == ref else 0.0
    r_proc = sum(r["valid"]) / len(r["valid"])
    r_len = _length_reward(len(r["steps"]))
    totals.append(
      w.answer_weight * r_ans
      + w.process_weight * r_proc
      + w.length_weight * r_len
      + w.format_weight * 1.0
    )
  return _group_advantages(totals)


def _expected_token_advantage(s, i, k, adv):
  """The spec's MRPO advantage of a token of step k (0-based, -1: none)."""
  r = s["rows"][i]
  tau = s["config"].rl.tau
  r_ans = 1.0 if r["answer"] == s["batch"]["answers"][i // G] else 0.0
  if r_ans > tau or k < 0:
    return adv
  if r["valid"][k]:
    return abs(adv)
  big_k = len(r["steps"])
  mult = math.exp(1 - k / (big_k - 1)) if big_k > 1 else 1.0
  return -mult * abs(adv)


def test_rewards_and_steps_use_the_true_step_count(setup, built):
  _, scored, adv_B = built
  ks = [len(r["steps"]) for r in setup["rows"]]
  assert ks[1] == 20
  np.testing.assert_array_equal(scored.num_steps_B, ks)
  for i, r in enumerate(setup["rows"]):
    assert scored.step_texts[i] == r["steps"]
    assert list(scored.labels[i].labels) == r["valid"]
  comps = scored.rewards.components
  # 20 steps: R_len = -(20 - 10) / 10 = -1 (merging into 16 gave -0.6).
  assert float(comps["length"][1]) == pytest.approx(-1.0)
  np.testing.assert_allclose(comps["length"], [_length_reward(k) for k in ks])
  # R_proc counts all 20 steps (4 valid).
  assert float(comps["process"][1]) == pytest.approx(4 / 20)
  np.testing.assert_allclose(
    comps["process"], [sum(r["valid"]) / len(r["valid"]) for r in setup["rows"]]
  )
  np.testing.assert_allclose(comps["answer"], [1.0, 0.0, 0.0, 0.0])
  np.testing.assert_allclose(comps["format"], [1.0] * 4)
  np.testing.assert_allclose(
    adv_B, _expected_advantages(setup), rtol=1e-5, atol=1e-6
  )
  # Step slots are storage: the batch's largest K rounded up.
  assert scored.step_valid_BxK.shape == (4, 32)
  assert scored.step_valid_BxK[1, :20].tolist() == setup["rows"][1]["valid"]


def test_twenty_step_penalty_schedule(setup, built):
  """K = 20: an invalid first step gets e * |A|, an invalid last step 1."""
  update, _, adv_B = built
  t = setup["batch"]["prompt_ids_BxT"].shape[1]
  adv = float(adv_B[1])
  assert abs(adv) > 0.1
  step_id = update.value_labels.step_id_BxL[1, t:]
  adv_C = update.adv_BxL[1, t:]
  first, last = adv_C[step_id == 0], adv_C[step_id == 19]
  assert first.size and last.size
  np.testing.assert_allclose(first, -math.e * abs(adv), rtol=1e-5)
  np.testing.assert_allclose(last, -1.0 * abs(adv), rtol=1e-5)


def test_keep_rule_reaches_the_update_batch(setup, built):
  """rl.valid_step_advantage=keep: a valid step of a shaped (wrong-answer)
  row keeps A_i in the update batch; every other token is as under the
  spec's rule (`built`)."""
  spec_update, _, adv_B = built
  config = setup["config"].copy_and_resolve_references()
  with config.unlocked():
    config.rl.valid_step_advantage = "keep"
  keep_update, _, keep_adv_B = _build({**setup, "config": config})
  np.testing.assert_array_equal(keep_adv_B, adv_B)
  t = setup["batch"]["prompt_ids_BxT"].shape[1]
  changed = 0
  for i, r in enumerate(setup["rows"]):
    right = r["answer"] == setup["batch"]["answers"][i // G]
    step_id = np.asarray(keep_update.value_labels.step_id_BxL[i, t:])
    valid = np.asarray(keep_update.value_labels.step_valid_BxL[i, t:])
    keep_C = np.asarray(keep_update.adv_BxL[i, t:])
    spec_C = np.asarray(spec_update.adv_BxL[i, t:])
    kept = (step_id >= 0) & (valid > 0) & (not right)  # R_ans 0 <= tau
    np.testing.assert_allclose(keep_C[kept], adv_B[i], rtol=1e-6)
    np.testing.assert_array_equal(keep_C[~kept], spec_C[~kept])
    changed += int(kept.any() and adv_B[i] < 0)
  assert changed  # the fixture has a wrong answer with a valid step, A < 0


def _columns(update):
  """Every per-token [B, L] array of an update batch, by field name."""
  labels = update.value_labels
  return {
    "ids_BxL": update.seq.ids_BxL,
    "mask_BxL": update.seq.mask_BxL,
    "loss_mask_BxL": update.seq.loss_mask_BxL,
    "adv_BxL": update.adv_BxL,
    "old_logp_BxL": update.old_logp_BxL,
    "step_id_BxL": labels.step_id_BxL,
    "step_valid_BxL": labels.step_valid_BxL,
  }


def test_update_batch_token_by_token(setup, built):
  update, _, _ = built
  s = setup
  prompt_ids, prompt_mask = (
    s["batch"]["prompt_ids_BxT"],
    s["batch"]["prompt_mask_BxT"],
  )
  t = prompt_ids.shape[1]
  c = s["tokens_BxC"].shape[1]
  adv_B = _expected_advantages(s)
  b = len(s["rows"])
  columns = _columns(update)
  for key, value in columns.items():
    assert value.shape == (b, t + c), key
  assert update.ref_logp_BxL is None
  assert update.seq.positions_3xBxL.shape == (3, b, t + c)
  np.testing.assert_array_equal(update.value_labels.label_mask_B, [1, 1, 1, 1])
  for i, r in enumerate(s["rows"]):
    p = i // G
    n = len(r["ids"])
    for j in range(t + c):
      got = {k: v[i, j] for k, v in columns.items()}
      if j < t:  # the left-padded prompt: nothing to train
        assert got["ids_BxL"] == prompt_ids[p, j]
        assert got["mask_BxL"] == prompt_mask[p, j]
        assert got["loss_mask_BxL"] == 0
        assert got["adv_BxL"] == 0 and got["old_logp_BxL"] == 0
        assert got["step_id_BxL"] == -1 and got["step_valid_BxL"] == 0
        continue
      col = j - t
      assert got["ids_BxL"] == s["tokens_BxC"][i, col]
      if col >= n:  # right padding after the eos
        assert got["mask_BxL"] == 0 and got["loss_mask_BxL"] == 0
        assert got["step_id_BxL"] == -1 and got["old_logp_BxL"] == 0
        continue
      k = r["step_of"][col]
      where = f"row {i} column {j} (completion token {col}, step {k})"
      assert got["mask_BxL"] == 1 and got["loss_mask_BxL"] == 1, where
      assert got["old_logp_BxL"] == s["logp_BxC"][i, col], where
      assert got["step_id_BxL"] == k, where
      assert got["step_valid_BxL"] == (r["valid"][k] if k >= 0 else 0), where
      want = _expected_token_advantage(s, i, k, adv_B[i])
      assert got["adv_BxL"] == pytest.approx(want, rel=1e-5, abs=1e-6), where
  # Every step of every row is laid out, in order.
  for i, r in enumerate(s["rows"]):
    ids = columns["step_id_BxL"][i, t:]
    assert sorted(set(ids.tolist()) - {-1}) == list(range(len(r["steps"])))
  # The completion's first token sits right after the prompt's last one.
  np.testing.assert_array_equal(columns["mask_BxL"][:, t - 1], 1)
  np.testing.assert_array_equal(columns["ids_BxL"][:, t], s["tokens_BxC"][:, 0])


def test_device_sequences_equal_the_host_build(setup, built):
  """The sequences built from the sampler's output on the device
  (`sampler.full_sequence`) equal `sequences.build` on the host (M-RoPE
  positions over the whole row, `rope_index`), padding included."""
  update, _, _ = built
  s = setup
  batch = s["batch"]
  num = len(batch["ids"])
  host = sequences.build(
    batch["prompt_ids_BxT"],
    batch["prompt_mask_BxT"],
    s["tokens_BxC"],
    s["mask_BxC"],
    image_slots.from_batch(batch, num, s["cfg"]),
    s["cfg"],
    G,
  )
  got, want = jax.tree.leaves(update.seq), jax.tree.leaves(host)
  assert len(got) == len(want)
  for x, y in zip(got, want):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def _score_by_head(s, odd_logit, config=None, noise=0.0):
  """`rollout.score` of the test's completions by the value-head source,
  whose logit at each step's last token is +3 on even steps and
  `odd_logit` on odd ones (`noise` x N(0, 1) elsewhere)."""
  b, c = s["tokens_BxC"].shape
  rng = np.random.default_rng(0)
  logits_BxC = (rng.normal(size=(b, c)) * noise).astype(np.float32)
  for i, r in enumerate(s["rows"]):
    step_of = np.asarray(r["step_of"])
    for k in range(len(r["steps"])):
      end = np.flatnonzero(step_of == k)[-1]
      logits_BxC[i, end] = 3.0 if k % 2 == 0 else odd_logit
  return rollout.score(
    s["tokens_BxC"],
    s["lengths_B"],
    batches.examples(s["batch"]),
    tokenizer=s["tok"],
    source=process.ValueHeadSource(0.5),
    config=config or s["config"],
    value_logits_BxC=logits_BxC,
  )


def test_value_head_labels_cover_every_step(setup):
  """The value-head source reads a logit for each of the 20 steps."""
  s = setup
  # Logit +3 at the last token of even steps, -3 at odd ones, noise
  # elsewhere: labels alternate 1, 0, 1, ... over all K steps.
  scored = _score_by_head(s, -3.0, noise=0.1)
  for i, r in enumerate(s["rows"]):
    k = len(r["steps"])
    assert list(scored.labels[i].labels) == [1 - j % 2 for j in range(k)]
  assert float(scored.rewards.components["process"][1]) == pytest.approx(0.5)


def test_unsure_value_head_labels_leave_steps_unshaped(setup):
  """With rl.value_min_confidence = 0.8 the head's labels of its unsure
  steps (logit -0.5: p = 0.38) reach the advantages as -1 and their tokens
  keep A_i; its sure labels (logit +3: p = 0.95) shape their steps. The
  labels themselves and the process reward are the head's hard labels."""
  s = setup
  config = s["config"].copy_and_resolve_references()
  with config.unlocked():
    config.rl.value_min_confidence = 0.8
  scored = _score_by_head(s, -0.5, config)
  inputs = rollout.advantage_inputs(scored)
  adv_B, adv_BxC = advantages.ALGORITHMS.get("mrpo")(
    inputs, G, rollout.reward_weights(scored)
  )
  adv_B, adv_BxC = np.asarray(adv_B), np.asarray(adv_BxC)
  for i, r in enumerate(s["rows"]):
    k = len(r["steps"])
    assert list(scored.labels[i].labels) == [1 - j % 2 for j in range(k)]
    assert list(inputs.step_valid_BxK[i, :k]) == [
      1 - 2 * (j % 2) for j in range(k)
    ]
    # Every row but row 0 (right answer) is shaped: even steps +|A_i|,
    # odd (unsure) steps A_i, like the tokens outside any step.
    step_of = np.asarray(r["step_of"])
    for t, step in enumerate(step_of):
      if i == 0 or step < 0 or step % 2 == 1:
        want = adv_B[i]
      else:
        want = abs(adv_B[i])
      assert adv_BxC[i, t] == pytest.approx(want, rel=1e-6), (i, t)
  assert min(abs(adv_B[1:])) > 0.1  # the check can tell A_i from |A_i|
  assert (adv_B[1:] < 0).any()
  assert float(scored.rewards.components["process"][1]) == pytest.approx(0.5)


def test_micro_batches_split_every_field_consistently(setup, built):
  """Micro-batch p of whole groups equals the update of prompt p alone."""
  update, _, _ = built
  micros = list(batches.micro_batches(update, 2, G))
  assert len(micros) == 2
  for p, micro in enumerate(micros):
    alone, _, _ = _build(setup, slice(p, p + 1))
    got = jax.tree_util.tree_flatten_with_path(micro)[0]
    want = jax.tree_util.tree_flatten_with_path(alone)[0]
    assert [k for k, _ in got] == [k for k, _ in want]
    assert micro.seq.ids_BxL.shape[0] == G
    assert micro.seq.positions_3xBxL.shape[1] == G
    assert micro.seq.images.pixels_IxNxP.shape[0] == 1
    for (key, x), (_, y) in zip(got, want):
      name = jax.tree_util.keystr(key)
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6, err_msg=name)
  with pytest.raises(ValueError, match="whole groups"):
    list(batches.micro_batches(update, 3, G))


def test_step_slots():
  assert rollout.step_slots(0) == 16
  assert rollout.step_slots(16) == 16
  assert rollout.step_slots(17) == 32
  assert rollout.step_slots(20) == 32


def test_metrics_with_skipped_labels(setup, built):
  """A completion without labels (judge fallback "skip") is left out of
  the step statistics, not of accuracy or the step count."""
  _, scored, _ = built
  labels = list(scored.labels)
  labels[0] = process.StepLabels((), skipped=True)
  skipped = dataclasses.replace(scored, labels=labels)
  samples = types.SimpleNamespace(lengths_B=setup["lengths_B"])
  m = rollout.metrics(skipped, samples)
  kept = [v for r in setup["rows"][1:] for v in r["valid"]]
  assert m["step_validity"] == pytest.approx(sum(kept) / len(kept))
  assert m["accuracy"] == pytest.approx(0.25)
  ks = [len(r["steps"]) for r in setup["rows"]]
  assert m["num_steps"] == pytest.approx(sum(ks) / len(ks))
