"""`train.rollout.generate` ends a completion at any of the tokenizer's
stop ids (`TokenizerInfo.stop_ids`), not only at <|im_end|>."""

import jax
import numpy as np

from stepjax.data import tokenizer as tok_lib
from stepjax.train import rollout

from . import split_setup


def test_rollout_stops_at_the_second_stop_id():
  """A row that emits the second stop id (a checkpoint's <|endoftext|>)
  ends there: later tokens are padding and masked out."""
  cfg, graphdef, params = split_setup.model()
  graphs, _, sampling = split_setup.rollout_args(cfg, graphdef)
  batch = split_setup.batch(cfg, 2)

  def run(stop_ids):
    info = tok_lib.TokenizerInfo(
      pad_id=cfg.pad_token_id,
      eos_id=cfg.eos_token_id,
      im_start_id=0,
      image_pad_id=cfg.image_pad_token_id,
      vision_start_id=cfg.vision_start_token_id,
      vision_end_id=cfg.vision_end_token_id,
      vocab_size=cfg.text.vocab_size,
      stop_ids=stop_ids,
    )
    return rollout.generate(
      graphs, info, sampling, params, batch, jax.random.key(0),
      group_size=1, temperature=0.0,
    )  # fmt: skip

  free = run((cfg.eos_token_id,))
  row = free.tokens_BxR[0, : int(free.lengths_B[0])].tolist()
  # The second stop id: a token the row first emits after step 0.
  at = next(k for k in range(1, len(row)) if row[k] not in row[:k])
  out = run((cfg.eos_token_id, row[at]))
  assert int(out.lengths_B[0]) == at + 1
  np.testing.assert_array_equal(out.tokens_BxR[0, : at + 1], row[: at + 1])
  assert (out.tokens_BxR[0, at + 1 :] == cfg.pad_token_id).all()
  assert (out.mask_BxR[0, at + 1 :] == 0).all()
  assert out.mask_BxR[0, : at + 1].all()
