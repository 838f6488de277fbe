"""`stepjax bench train` on a tiny model: both sides compute the same update.

One timed update of 4 completions x 40 tokens on the `tiny` preset (and
one on `tiny_internvl`); the speed is not asserted, only parity and the
result's keys.
"""

from stepjax.train import bench

KEYS = (
  "tokens",
  "ours_s",
  "ours_tokens_per_s",
  "hf_s",
  "hf_tokens_per_s",
  "ratio",
  "xla_flops",
  "analytic_flops",
  "ours_flops_per_s",
  "ours_loss",
  "hf_loss",
  "ours_grad_norm",
  "hf_grad_norm",
  "logp_max_abs_diff",
)


def test_tiny_update_matches_transformers():
  result = bench.bench_train(
    preset="tiny",
    prompts=2,
    group_size=2,
    prompt_text=8,  # + 6 image tokens = 14 prompt tokens
    completion=26,
    image_px=56,
    iters=1,
    peak=False,
  )
  assert set(KEYS) <= set(result)
  assert result["tokens"] == 4 * 40
  assert abs(result["ours_loss"] - result["hf_loss"]) <= 1e-4
  assert result["grad_norm_rel_diff"] <= 1e-3
  assert result["logp_max_abs_diff"] <= 1e-4
  assert result["ours_grad_norm"] > 0
  assert "stepjax" in bench.format_table(result)


def test_tiny_internvl_update_matches_transformers():
  """InternVL: two 56-pixel tiles per image (a 112-pixel bench image)."""
  result = bench.bench_train(
    preset="tiny_internvl",
    prompts=2,
    group_size=2,
    prompt_text=8,  # + 16 image tokens
    completion=16,
    image_px=112,
    iters=1,
    peak=False,
  )
  assert abs(result["ours_loss"] - result["hf_loss"]) <= 1e-4
  assert result["grad_norm_rel_diff"] <= 1e-3
  assert result["logp_max_abs_diff"] <= 1e-4
  assert result["ours_grad_norm"] > 0
