"""The answer reward's BERTScore (`rewards.BertScorer`, bert-score package)
on a tiny random BERT saved to a temporary directory: checked against a
numpy recomputation from the encoder's hidden states and against
`bert_score.score`, mixed into R_ans, and used by a tiny training run."""

import importlib.util
import json
import pathlib
import shutil
import sys

import numpy as np
import pytest

bert_score = pytest.importorskip("bert_score")
torch = pytest.importorskip("torch")
import transformers  # noqa: E402

from stepjax.errors import InputError  # noqa: E402
from stepjax.rl import rewards  # noqa: E402
from stepjax.train import components  # noqa: E402

WORDS = "left right upper lower lobe lung nodule ct mri axial the a is".split()
LAYERS = 3
MAX_LEN = 64


def _save_tiny_bert(d: pathlib.Path) -> str:
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
  (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
  # The vocab path goes positionally: transformers 4 calls it vocab_file,
  # 5 calls it vocab (and silently ignores vocab_file=).
  tok = transformers.BertTokenizerFast(
    str(d / "vocab.txt"), model_max_length=MAX_LEN
  )
  assert tok.unk_token_id not in tok(" ".join(WORDS)).input_ids
  tok.save_pretrained(d)
  torch.manual_seed(0)
  cfg = transformers.BertConfig(
    vocab_size=len(vocab),
    hidden_size=32,
    num_hidden_layers=LAYERS,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=MAX_LEN,
  )
  transformers.BertModel(cfg).save_pretrained(d)
  return str(d)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  return _save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def scorer(tiny_bert):
  return rewards.BertScorer(tiny_bert)


def _pairs(n=24, seed=0):
  """Answer/reference pairs of 1-8 words (repeats, an unknown word)."""
  rng = np.random.default_rng(seed)
  vocab = [*WORDS, "xyz"]
  texts = [
    " ".join(rng.choice(vocab, size=rng.integers(1, 9))) for _ in range(2 * n)
  ]
  return texts[:n], texts[n:]


def numpy_f1(model_dir, answers, references, layer):
  """BERTScore F1 (Zhang et al. 2020, no idf) from the encoder's hidden
  states, one text at a time (no padding), in float64 numpy: L2-normalised
  token embeddings of hidden layer `layer`; P = mean over the answer's
  tokens of the best cosine to a reference token, R the reverse, F1 =
  2PR / (P + R). [CLS] and [SEP] are left out of the means; as in the
  bert-score package they stay candidates of the max (a token may match
  the other text's [CLS] or [SEP])."""
  tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  model = transformers.AutoModel.from_pretrained(model_dir).eval()

  def emb(text):
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
      out = model(**enc, output_hidden_states=True)
    h = out.hidden_states[layer][0].numpy().astype(np.float64)
    return h / np.linalg.norm(h, axis=1, keepdims=True)

  out = []
  for a, r in zip(answers, references):
    sim = emb(a) @ emb(r).T  # [CLS] first, [SEP] last on both axes
    p = sim[1:-1].max(axis=1).mean()
    rc = sim[:, 1:-1].max(axis=0).mean()
    out.append(2 * p * rc / (p + rc))
  return np.array(out)


def test_f1_matches_numpy_from_hidden_states(tiny_bert, scorer):
  answers, refs = _pairs()
  assert scorer.num_layers == LAYERS
  got = scorer.f1(answers, refs)
  want = numpy_f1(tiny_bert, answers, refs, LAYERS)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  assert got.dtype == np.float32
  assert scorer.f1(["left upper lobe"], ["left upper lobe"])[0] == (
    pytest.approx(1.0, abs=1e-5)
  )


def test_another_layer_matches_numpy(tiny_bert):
  answers, refs = _pairs(8, seed=1)
  got = rewards.BertScorer(tiny_bert, num_layers=1).f1(answers, refs)
  want = numpy_f1(tiny_bert, answers, refs, 1)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  last = numpy_f1(tiny_bert, answers, refs, LAYERS)
  assert np.max(np.abs(want - last)) > 1e-3  # the layer matters


def test_f1_matches_bert_score_called_directly(tiny_bert, scorer):
  answers, refs = _pairs(seed=2)
  _, _, f = bert_score.score(
    answers,
    refs,
    model_type=tiny_bert,
    num_layers=LAYERS,
    idf=False,
    rescale_with_baseline=False,
  )
  got = scorer.f1(answers, refs)
  np.testing.assert_allclose(got, f.numpy(), atol=1e-5, rtol=0)


def test_empty_texts_score_zero(scorer):
  got = scorer.f1(["", "lung", "  "], ["lung", "", "lung"])
  np.testing.assert_array_equal(got, [0.0, 0.0, 0.0])
  assert scorer.f1([], []).shape == (0,)


def test_long_texts_are_cut_at_the_encoder_length(tiny_bert, tmp_path):
  # A saved tokenizer without model_max_length (common for BERTs) must
  # not break bert-score: texts are cut at max_position_embeddings.
  d = tmp_path / "no_max_len"
  shutil.copytree(tiny_bert, d)
  cfg_path = d / "tokenizer_config.json"
  cfg = json.loads(cfg_path.read_text())
  cfg.pop("model_max_length", None)
  cfg_path.write_text(json.dumps(cfg))
  s = rewards.BertScorer(str(d))
  words = [WORDS[i % len(WORDS)] for i in range(3 * MAX_LEN)]
  long, cut = " ".join(words), " ".join(words[: MAX_LEN - 2])
  got = s.f1([long, "lung"], ["left lung", long])
  want = s.f1([cut, "lung"], ["left lung", cut])
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_answer_reward_mixes_rouge_bleu_and_bertscore(tiny_bert, scorer):
  completions = [
    "<think>a.</think><answer>lung</answer>",
    "<answer>right lower lobe nodule</answer>",
    "<answer>The left lung</answer>",  # matches: 1.0, not scored
  ]
  refs = ["lung mri", "left lobe", "left lung"]
  r, f1 = rewards.answer_parts(completions, refs, scorer)
  answers = ["lung", "right lower lobe nodule"]
  want_f1 = numpy_f1(tiny_bert, answers, refs[:2], LAYERS)
  for i, a in enumerate(answers):
    want = (
      0.25 * rewards.rouge1_f1(a, refs[i])
      + 0.25 * rewards.bleu1(a, refs[i])
      + 0.5 * want_f1[i]
    )
    assert r[i] == pytest.approx(want, abs=1e-5)
  assert r[2] == 1.0 and np.isnan(f1[2])
  np.testing.assert_allclose(f1[:2], want_f1, atol=1e-5)
  np.testing.assert_array_equal(
    rewards.answer_rewards(completions, refs, scorer), r
  )
  out = rewards.compute_rewards(completions, refs, [4, 4, 4], bertscore=scorer)
  np.testing.assert_array_equal(out.components["answer"], r)
  np.testing.assert_array_equal(out.bertscore_f1, f1)
  assert rewards.compute_rewards(["a"], ["b"], [4]).bertscore_f1 is None


def test_bad_directories_are_input_errors(tiny_bert, tmp_path):
  with pytest.raises(InputError, match="rewards.bertscore_model"):
    rewards.BertScorer(str(tmp_path / "missing"))
  no_weights = tmp_path / "no_weights"
  shutil.copytree(tiny_bert, no_weights)
  (no_weights / "model.safetensors").unlink()
  with pytest.raises(InputError, match="rewards.bertscore_model"):
    rewards.BertScorer(str(no_weights))
  with pytest.raises(InputError, match="layer 4 of 3"):
    rewards.BertScorer(tiny_bert, num_layers=LAYERS + 1)


def test_missing_package_is_a_one_line_input_error(tiny_bert, monkeypatch):
  monkeypatch.setitem(sys.modules, "bert_score", None)  # import fails
  config = _trainer_utils().test_config(
    **{"rewards.bertscore_model": tiny_bert}
  )
  with pytest.raises(InputError) as e:
    components.answer_scorer(config)
  assert "pip install 'stepjax[bertscore]'" in str(e.value)
  assert "\n" not in str(e.value)


def test_empty_key_builds_no_scorer():
  config = _trainer_utils().test_config()
  assert config.rewards.bertscore_model == ""
  assert components.answer_scorer(config) is None


def _trainer_utils():
  path = pathlib.Path(__file__).parents[1] / "train" / "trainer_utils.py"
  spec = importlib.util.spec_from_file_location("trainer_utils", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_training_run_uses_bertscore(tiny_bert, tmp_path, capsys, monkeypatch):
  """Two RL steps with rewards.bertscore_model set: the run says so once,
  scores each step's non-matching answers in one call, and logs their mean
  F1 per step."""
  from stepjax import jobs
  from stepjax.train import metrics

  calls = []
  f1 = rewards.BertScorer.f1

  def spy(self, answers, references):
    out = f1(self, answers, references)
    calls.append(out)
    return out

  monkeypatch.setattr(rewards.BertScorer, "f1", spy)
  config = _trainer_utils().test_config(
    **{
      "mesh.data": 1,
      "data.num_eval": 2,
      "sft.steps": 0,
      "train.steps": 2,
      "train.eval_before_rl": False,
      "rewards.bertscore_model": tiny_bert,
    }
  )
  jobs.train(config, str(tmp_path))
  out = capsys.readouterr().out
  line = f"answer reward: BERTScore from {tiny_bert} ({LAYERS} layers)"
  assert out.count(line) == 1
  records = metrics.read_metrics(str(tmp_path))
  assert [r["phase"] for r in records] == ["rl", "rl"]
  assert len(calls) == 2  # one call per RL step, none from evaluation
  for r, scored in zip(records, calls):
    assert len(scored) > 0
    assert r["answer_bertscore_f1"] == pytest.approx(
      float(np.mean(scored)), abs=1e-6
    )
