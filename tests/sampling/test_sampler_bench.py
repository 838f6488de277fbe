"""`stepjax bench sampler` on the tiny policy: both samplers run the
asked-for shapes, and `--profile` times each side op by op (the speed
itself is not asserted)."""

import pytest

from stepjax import op_profile
from stepjax.sampling import bench, sampler


def test_tiny_bench_with_profile_reports_both_sides_ops():
  pytest.importorskip("torch")
  result = bench.bench_sampler(
    prompts=2,
    group_size=2,
    new_tokens=4,
    text_tokens=8,
    image_px=56,
    iters=1,
    torch_threads=(1,),
    preset="tiny",
    profile=True,
  )
  assert result["tokens"] == 2 * 2 * 4
  assert result["ours_s"] > 0 and result["hf_s"] > 0
  ours, theirs = result["ops"]["stepjax"], result["ops"]["transformers"]
  # a sampler call is mostly its matmuls, on both sides
  assert ours["kinds_s"]["matmul"] > 0 and theirs["kinds_s"]["matmul"] > 0
  table = bench.format_table(result)
  assert "stepjax ops (ms per sampler call" in table
  assert "transformers ops (ms per sampler call" in table


def test_static_options_check_and_normalise_generates_options():
  with pytest.raises(ValueError, match="top_p"):
    sampler.static_options(max_new_tokens=4, top_p=0.0)
  with pytest.raises(ValueError, match="max_new_tokens"):
    sampler.static_options(max_new_tokens=0)
  opts = sampler.static_options(max_new_tokens=4, eos_ids=[3, 5])
  assert opts["eos_ids"] == (3, 5) and opts["max_new_tokens"] == 4


def test_format_summary_names_what_one_call_is():
  summary = op_profile._summary({"dot.1": 0.002}, {"dot.1": "matmul"}.get, 3)
  assert "ms per update" in op_profile.format_summary("x", summary)
  line = op_profile.format_summary("x", summary, per="sampler call")
  assert "x ops (ms per sampler call, summed over threads: 2.0)" in line
