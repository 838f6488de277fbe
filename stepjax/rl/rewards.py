"""Rewards per completion (host side): answer, process, step count, format.

Spec, "Rewards": R_ans is 1 for an answer equal to the reference after
normalisation, else 0.25 ROUGE-1 F1 + 0.25 BLEU-1 + 0.5 BERTScore F1;
R_proc is the fraction of valid steps; R_len penalises fewer than K_min or
more than K_max steps. `compute_rewards` returns each component (for
logging and for GDPO, which normalises them separately) and the weighted
sum. Shapes: B completions.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import string
from collections.abc import Sequence

import numpy as np

from stepjax.errors import InputError

log = logging.getLogger(__name__)

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
  w: str(i)
  for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven "
    "twelve thirteen fourteen fifteen sixteen seventeen eighteen "
    "nineteen twenty".split()
  )
}
for _i, _w in enumerate(
  "thirty forty fifty sixty seventy eighty ninety".split()
):
  _NUMBER_WORDS[_w] = str(30 + 10 * _i)
_NUMBER_WORDS["hundred"] = "100"
# Punctuation becomes a space, except a decimal point between digits.
_OTHER_PUNCT = re.escape(string.punctuation.replace(".", ""))
_PUNCT = re.compile(rf"(?<!\d)\.|\.(?!\d)|[{_OTHER_PUNCT}]")

_warned_no_encoder = False


def extract_answer(completion: str) -> str:
  """The first `<answer>...</answer>` content (stripped), else the text."""
  m = _ANSWER.search(completion)
  return (m.group(1) if m else completion).strip()


def normalise(text: str) -> str:
  """Lower case, punctuation -> space, number words -> digits, no articles,
  single spaces. "The Left  Lung." -> "left lung", "two" -> "2"."""
  words = _PUNCT.sub(" ", text.lower()).split()
  words = [_NUMBER_WORDS.get(w, w) for w in words if w not in _ARTICLES]
  return " ".join(words)


def _as_number(text: str) -> float | None:
  try:
    return float(text.replace(" ", ""))
  except ValueError:
    return None


def answers_match(answer: str, reference: str) -> bool:
  """Exact match after `normalise`, or equal numbers ("2.0" == "two")."""
  a, r = normalise(answer), normalise(reference)
  if a == r:
    return True
  x, y = _as_number(a), _as_number(r)
  return x is not None and y is not None and x == y


# rouge-score and nltk are imported at first use: nltk's import takes
# ~1 s that commands which score no answer need not pay.
@functools.cache
def _rouge():
  from rouge_score import rouge_scorer

  return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)


@functools.cache
def _bleu():
  """(nltk's bleu_score, its smoothing method1)."""
  from nltk.translate import bleu_score

  return bleu_score, bleu_score.SmoothingFunction().method1


def rouge1_f1(answer: str, reference: str) -> float:
  """ROUGE-1 F1 (rouge-score, no stemming); 0 when either side is empty."""
  if not normalise(answer) or not normalise(reference):
    return 0.0
  return float(_rouge().score(reference, answer)["rouge1"].fmeasure)


def bleu1(answer: str, reference: str) -> float:
  """Sentence BLEU-1 on normalised words (nltk, smoothing method1)."""
  hyp, ref = normalise(answer).split(), normalise(reference).split()
  if not hyp or not ref:
    return 0.0
  bleu_score, smooth = _bleu()
  return float(
    bleu_score.sentence_bleu(
      [ref], hyp, weights=(1, 0, 0, 0), smoothing_function=smooth
    )
  )


class BertScorer:
  """BERTScore F1 (the `bert-score` package) with a local HF encoder dir.

  The paper's settings: token embeddings of hidden layer `num_layers`
  (default: the encoder's last, its num_hidden_layers; 12 for the
  biomedical BERT), no idf, no baseline rescale. As in bert-score, [CLS]
  and [SEP] carry no weight in precision and recall but stay in the
  similarity matrix (a token may match them best). Texts are cut at the
  encoder's length (at most 512 tokens). Needs `pip install
  'stepjax[bertscore]'` (bert-score and torch).
  """

  def __init__(self, model_dir: str, num_layers: int | None = None):
    bert_score = _import_bert_score()
    import transformers

    self.model_dir = model_dir
    try:
      if not os.path.isdir(model_dir):
        raise OSError("not a directory")
      cfg = transformers.AutoConfig.from_pretrained(model_dir)
      depth = int(getattr(cfg, "num_hidden_layers", 0))
      self.num_layers = depth if num_layers is None else int(num_layers)
      if not 1 <= self.num_layers <= depth:
        raise ValueError(f"layer {self.num_layers} of {depth}")
      self._scorer = bert_score.BERTScorer(
        model_type=model_dir,
        num_layers=self.num_layers,
        idf=False,
        rescale_with_baseline=False,
      )
    except (OSError, ValueError) as e:
      raise InputError(
        f"rewards.bertscore_model={model_dir!r} is not a loadable HF "
        f"encoder directory ({e}); point it at a local dir with config, "
        "weights and tokenizer, or set it to '' to turn BERTScore off"
      ) from None
    # bert-score truncates at the tokenizer's model_max_length, which is
    # unset (1e30) in many saved BERT tokenizers: cap it at the encoder's.
    tok = self._scorer._tokenizer
    limit = getattr(cfg, "max_position_embeddings", 512)
    tok.model_max_length = min(tok.model_max_length, limit, 512)

  def f1(self, answers: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """float32[B] BERTScore F1 of each answer against its reference, all
    in one bert-score call; 0 where either side is empty."""
    out = np.zeros(len(answers), np.float32)
    todo = [
      i
      for i, (a, r) in enumerate(zip(answers, references))
      if a.strip() and r.strip()
    ]
    if todo:
      _, _, f = self._scorer.score(
        [answers[i] for i in todo], [references[i] for i in todo]
      )
      out[todo] = f.numpy()
    return out


def _import_bert_score():
  try:
    import bert_score
  except ImportError as e:
    raise InputError(
      f"rewards.bertscore_model is set but bert-score cannot be imported "
      f"({e}): pip install 'stepjax[bertscore]', or set "
      "rewards.bertscore_model=''"
    ) from None
  return bert_score


def answer_rewards(
  completions: Sequence[str],
  references: Sequence[str],
  bertscore: BertScorer | None = None,
) -> np.ndarray:
  """R_ans per completion: float32[B] in [0, 1] (see `answer_parts`)."""
  return answer_parts(completions, references, bertscore)[0]


def answer_parts(
  completions: Sequence[str],
  references: Sequence[str],
  bertscore: BertScorer | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
  """(R_ans float32[B] in [0, 1], BERTScore F1 float32[B] or None).

  R_ans is 1.0 on a match (`answers_match`), else 0.25 ROUGE-1 + 0.25
  BLEU-1 + 0.5 BERTScore F1 (scored for the non-matches only, in one
  call; NaN in the F1 array for matches); without `bertscore` the 0.5 goes
  half to each of the others (with a warning once per process) and the F1
  array is None.
  """
  global _warned_no_encoder
  answers = [extract_answer(c) for c in completions]
  exact = np.array(
    [answers_match(a, r) for a, r in zip(answers, references)], bool
  )
  rouge = np.array([rouge1_f1(a, r) for a, r in zip(answers, references)])
  bleu = np.array([bleu1(a, r) for a, r in zip(answers, references)])
  bert = None
  if bertscore is None:
    if not _warned_no_encoder:
      _warned_no_encoder = True
      log.warning(
        "no BERTScore encoder (rewards.bertscore_model is empty): the "
        "answer reward uses 0.5 ROUGE-1 + 0.5 BLEU-1"
      )
    soft = 0.5 * rouge + 0.5 * bleu
  else:
    todo = np.flatnonzero(~exact)
    bert = np.full(len(answers), np.nan, np.float32)
    if len(todo):
      bert[todo] = bertscore.f1(
        [answers[i] for i in todo], [references[i] for i in todo]
      )
    soft = 0.25 * rouge + 0.25 * bleu + 0.5 * np.nan_to_num(bert)
  return np.where(exact, 1.0, soft).astype(np.float32), bert


def length_reward(num_steps, k_min: int = 4, k_max: int = 10) -> np.ndarray:
  """R_len(K): -(k_min - K)/k_min below k_min, -(K - k_max)/k_max above."""
  k = np.asarray(num_steps, np.float32)
  below = -(k_min - k) / k_min
  above = -(k - k_max) / k_max
  return np.where(k < k_min, below, np.where(k > k_max, above, 0.0)).astype(
    np.float32
  )


def format_reward(completion: str, think_tag: str = "think") -> float:
  """1.0 for `<think>...</think><answer>...</answer>` (whitespace between
  and trailing `<|...|>` end tokens allowed, no nested tags), else 0.0."""
  tag = re.escape(think_tag)
  pattern = (
    rf"\s*<{tag}>(.*?)</{tag}>\s*<answer>(.*?)</answer>\s*"
    r"(?:<\|[^|<>\s]{1,40}\|>\s*)*"
  )
  m = re.fullmatch(pattern, completion, re.DOTALL)
  if m is None:
    return 0.0
  inner = m.group(1) + m.group(2)
  nested = re.search(rf"</?(?:{tag}|answer)>", inner)
  return 0.0 if nested else 1.0


def process_rewards(
  labels: Sequence[Sequence[int] | None],
) -> tuple[np.ndarray, np.ndarray]:
  """R_proc = fraction of valid steps; (float32[B], has_labels bool[B]).

  None (judge fallback "skip") gives no process reward: 0 and has_labels
  False. A completion with no steps gets 0.
  """
  r = np.zeros(len(labels), np.float32)
  has = np.zeros(len(labels), bool)
  for i, lab in enumerate(labels):
    if lab is None:
      continue
    has[i] = True
    r[i] = float(np.mean(lab)) if len(lab) else 0.0
  return r, has


COMPONENTS = ("answer", "process", "length", "format")


@dataclasses.dataclass
class Rewards:
  """Per-completion rewards.

  components: name -> float32[B], for the names in COMPONENTS.
  weights: name -> weight used in `total`.
  total: float32[B] weighted sum.
  has_labels: bool[B] whether the process reward exists (not skipped).
  bertscore_f1: float32[B] the answer's BERTScore F1 (NaN where the answer
    matched and was not scored); None without a BERTScore encoder.
  """

  components: dict[str, np.ndarray]
  weights: dict[str, float]
  total: np.ndarray
  has_labels: np.ndarray
  bertscore_f1: np.ndarray | None = None

  def matrix(self) -> tuple[np.ndarray, np.ndarray]:
    """(rewards float32[B, C], weights float32[C]) in COMPONENTS order."""
    r = np.stack([self.components[n] for n in COMPONENTS], axis=1)
    w = np.array([self.weights[n] for n in COMPONENTS], np.float32)
    return r.astype(np.float32), w


def compute_rewards(
  completions: Sequence[str],
  references: Sequence[str],
  num_steps: Sequence[int],
  step_labels: Sequence[Sequence[int] | None] | None = None,
  *,
  answer_weight: float = 1.0,
  process_weight: float = 1.0,
  length_weight: float = 1.0,
  format_weight: float = 0.0,
  k_min: int = 4,
  k_max: int = 10,
  think_tag: str = "think",
  bertscore: BertScorer | None = None,
) -> Rewards:
  """All reward components and their weighted sum (rewards.* config keys).

  Args:
    completions: B completion texts.
    references: B reference answers.
    num_steps: B step counts K.
    step_labels: B per-step 0/1 label lists (None = skipped); None for
      the whole argument means no process reward.
    bertscore: the answer reward's BERTScore scorer (None: ROUGE-1 and
      BLEU-1 only); the answers that do not match are scored in one call.

  Returns:
    `Rewards`.
  """
  if not len(completions) == len(references) == len(num_steps):
    raise ValueError(
      f"compute_rewards: {len(completions)} completions, "
      f"{len(references)} references, {len(num_steps)} step counts; "
      "pass one of each per completion"
    )
  b = len(completions)
  if step_labels is None:
    proc, has = np.zeros(b, np.float32), np.zeros(b, bool)
  else:
    proc, has = process_rewards(step_labels)
  answer, bert_f1 = answer_parts(completions, references, bertscore)
  comps = {
    "answer": answer,
    "process": proc,
    "length": length_reward(num_steps, k_min, k_max),
    "format": np.array(
      [format_reward(c, think_tag) for c in completions], np.float32
    ),
  }
  weights = {
    "answer": answer_weight,
    "process": process_weight,
    "length": length_weight,
    "format": format_weight,
  }
  total = sum(weights[n] * comps[n] for n in COMPONENTS).astype(np.float32)
  return Rewards(comps, weights, total, has, bert_f1)
