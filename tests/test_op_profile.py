"""op_profile.py: per-op time of an XLA call and of PyTorch, by kind."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepjax import op_profile


def _kinds_of(fn, *args):
  compiled = jax.jit(fn).lower(*args).compile()
  return op_profile.hlo_op_kinds(compiled.as_text()), compiled


@pytest.mark.parametrize(
  "fn, expected",
  [
    (lambda x: x @ x, "matmul"),
    (lambda x: jnp.tanh(x @ x) + 1.0, "matmul"),
    (lambda x: x.T, "layout"),
    (lambda x: jnp.sum(jnp.exp(x), axis=0), "reduce"),
    (lambda x: x[jnp.array([3, 1, 2])] * 2.0, "gather"),
  ],
)
def test_hlo_kinds_name_what_the_computation_does(fn, expected):
  kinds, _ = _kinds_of(fn, jnp.ones((64, 64)))
  assert expected in kinds.values()
  # nothing is called a matmul that has none
  assert ("matmul" in kinds.values()) == (expected == "matmul")


def test_loops_are_containers_and_their_bodies_are_classified():
  def fn(x):
    return jax.lax.fori_loop(0, 3, lambda i, y: jnp.tanh(y @ x), x)

  kinds, _ = _kinds_of(fn, jnp.ones((32, 32)))
  assert "container" in kinds.values()
  assert "matmul" in kinds.values()


def test_xla_op_times_attributes_a_matmul():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(256, 256)), jnp.float32)
  compiled = jax.jit(lambda a: jnp.tanh(a @ a) @ a).lower(x).compile()
  compiled(x).block_until_ready()
  out = op_profile.xla_op_times(
    lambda: compiled(x).block_until_ready(), compiled.as_text(), iters=2
  )
  assert set(out["kinds_s"]) == set(op_profile.KINDS)
  assert out["kinds_s"]["matmul"] > 0
  assert out["total_s"] == pytest.approx(sum(out["kinds_s"].values()))
  kinds = op_profile.hlo_op_kinds(compiled.as_text())
  for name, kind, seconds in out["top"]:
    assert kinds[name] == kind and seconds > 0
  assert "matmul" in op_profile.format_summary("stepjax", out)


def test_torch_kinds_and_times():
  torch = pytest.importorskip("torch")
  assert op_profile.torch_kind("aten::addmm") == "matmul"
  assert op_profile.torch_kind("aten::copy_") == "layout"
  assert op_profile.torch_kind("aten::_log_softmax") == "reduce"
  assert op_profile.torch_kind("aten::embedding") == "gather"
  assert op_profile.torch_kind("aten::gelu") == "elementwise"
  a = torch.randn(128, 128)
  out = op_profile.torch_op_times(lambda: torch.tanh(a @ a).sum(), iters=2)
  assert out["kinds_s"]["matmul"] > 0 and out["kinds_s"]["reduce"] > 0


def test_bench_table_prints_both_sides_ops():
  from stepjax.train import bench

  summary = op_profile._summary(
    {"fusion.1": 0.003, "copy.2": 0.001},
    {"fusion.1": "matmul", "copy.2": "layout"}.get,
    5,
  )
  result = {
    "ours_tokens_per_s": 1.0, "ours_s": 1.0, "rows": 1, "seq_len": 1,
    "params": 1.0, "ours_compile_s": 1.0, "xla_flops": 1.0,
    "analytic_flops": 1.0, "analytic_matmul_flops": 1.0,
    "ours_flops_per_s": 1.0,
    "ops": {"stepjax": summary, "transformers": summary},
  }  # fmt: skip
  table = bench.format_table(result)
  assert "stepjax ops (ms per update, summed over threads: 4.0)" in table
  assert "matmul 3.0 (75%), layout 1.0 (25%)" in table
  assert "transformers ops" in table and "fusion.1 [matmul] 3.0" in table
