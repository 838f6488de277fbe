"""Where a jitted call's time goes, op by op, and the same for PyTorch.

`xla_op_times` runs a compiled XLA call under `jax.profiler.trace`, reads
the trace's per-op events (XLA:CPU emits one per thunk: a dot, a fusion, a
copy, ...) and sorts each op into a kind by reading the compiled HLO:

  matmul     a dot or convolution, or a fusion around one (XNNPACK's
             `ynn_fusion`s included)
  layout     a copy or transpose, or a fusion of only those (and bitcasts,
             reshapes, broadcasts, slices, concatenates)
  reduce     a reduce or a fusion around one (softmax sums, norms)
  gather     gather / scatter / dynamic (update) slices, or fusions of them
  elementwise  the other fusions and ops
Loops and calls (`while`, `conditional`, `call`) are containers: their own
events span their bodies' ops and are left out, so no time counts twice.
Ops may run on several threads at once, so the kinds' sum can exceed the
call's wall time; shares are of that sum.

`torch_op_times` does the same for a PyTorch callable with
`torch.profiler`: self CPU time per aten op (children excluded), sorted
into the same kinds by op name.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile
from collections.abc import Callable
from typing import Any

import jax

KINDS = ("matmul", "layout", "reduce", "gather", "elementwise")
CONTAINERS = frozenset({"while", "conditional", "call", "async-start"})

_MATMUL_OPS = frozenset({"dot", "convolution"})
_LAYOUT_OPS = frozenset(
  {
    "copy",
    "transpose",
    "bitcast",
    "reshape",
    "broadcast",
    "slice",
    "concatenate",
    "parameter",
    "constant",
    "tuple",
    "get-tuple-element",
  }
)
_MOVES = frozenset({"copy", "transpose", "concatenate", "slice", "broadcast"})
_GATHER_OPS = frozenset(
  {"gather", "scatter", "dynamic-slice", "dynamic-update-slice"}
)
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(
  r"^\s*(?:ROOT\s+)?%([\w.\-]+) = .*? ([a-z][\w\-]*)\((.*)$"
)
_CALLS = re.compile(r"calls=%([\w.\-]+)")


def hlo_op_kinds(hlo_text: str) -> dict[str, str]:
  """instruction name -> kind (or "container") for every instruction of a
  compiled module's text; fusions are classified by the ops they call."""
  opcodes: dict[str, list[str]] = collections.defaultdict(list)
  instructions: dict[str, tuple[str, str | None]] = {}
  current = None
  for line in hlo_text.splitlines():
    if m := _COMPUTATION.match(line):
      current = m.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if m is None or current is None:
      continue
    name, opcode, rest = m.groups()
    opcodes[current].append(opcode)
    called = _CALLS.search(rest)
    instructions[name] = (opcode, called.group(1) if called else None)

  def kind_of(ops: list[str]) -> str:
    present = set(ops)
    if present & _MATMUL_OPS:
      return "matmul"
    if "reduce" in present or "reduce-window" in present:
      return "reduce"
    if present & _GATHER_OPS:
      return "gather"
    if present <= _LAYOUT_OPS and present & _MOVES:
      return "layout"
    return "elementwise"

  out = {}
  for name, (opcode, called) in instructions.items():
    if opcode in CONTAINERS:
      out[name] = "container"
    elif opcode == "fusion" and called in opcodes:
      out[name] = kind_of(opcodes[called])
    else:
      out[name] = kind_of([opcode])
  return out


def _trace_events(log_dir: str) -> list[dict[str, Any]]:
  paths = sorted(glob.glob(f"{log_dir}/**/*.trace.json.gz", recursive=True))
  if not paths:
    raise RuntimeError(f"jax.profiler wrote no trace under {log_dir}")
  with gzip.open(paths[-1]) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  return [e for e in events if e.get("ph") == "X"]


def xla_op_times(
  call: Callable[[], Any], hlo_text: str, iters: int = 3, top: int = 8
) -> dict[str, Any]:
  """Seconds per call of each kind of op, and the `top` ops by time.

  call: runs the compiled computation once and blocks on its result
  (already warmed up); hlo_text: its `compiled.as_text()`."""
  kinds = hlo_op_kinds(hlo_text)
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(iters):
        call()
    events = _trace_events(tmp)
  per_op: dict[str, float] = collections.defaultdict(float)
  for e in events:
    kind = kinds.get(e["name"])
    if kind is not None and kind != "container":
      per_op[e["name"]] += e.get("dur", 0.0) * 1e-6 / iters
  return _summary(per_op, lambda name: kinds[name], top)


# aten ops by kind; anything else (activations, adds, the optimizer's
# foreach ops, ...) counts as elementwise.
_TORCH_KINDS = (
  (
    "matmul",
    (
      "aten::mm",
      "aten::addmm",
      "aten::bmm",
      "aten::baddbmm",
      "aten::linear",
      "aten::matmul",
      "aten::_scaled_dot_product",
      "aten::conv",
      "aten::_convolution",
      "aten::mkldnn",
    ),
  ),
  (
    "layout",
    (
      "aten::copy_",
      "aten::clone",
      "aten::contiguous",
      "aten::cat",
      "aten::t",
      "aten::transpose",
      "aten::permute",
      "aten::reshape",
      "aten::view",
      "aten::expand",
      "aten::as_strided",
      "aten::slice",
      "aten::select",
      "aten::unsqueeze",
      "aten::squeeze",
      "aten::repeat",
    ),
  ),
  (
    "reduce",
    (
      "aten::sum",
      "aten::mean",
      "aten::logsumexp",
      "aten::_log_softmax",
      "aten::_softmax",
      "aten::norm",
      "aten::linalg_vector_norm",
      "aten::max",
      "aten::amax",
    ),
  ),
  (
    "gather",
    (
      "aten::gather",
      "aten::index",
      "aten::scatter",
      "aten::embedding",
      "aten::masked_scatter",
      "aten::index_put",
    ),
  ),
)


def torch_kind(name: str) -> str:
  """The kind of an aten op by its name (prefix match on the table)."""
  for kind, prefixes in _TORCH_KINDS:
    if name.startswith(prefixes):
      return kind
  return "elementwise"


def torch_op_times(
  call: Callable[[], Any], iters: int = 3, top: int = 8
) -> dict[str, Any]:
  """Self CPU seconds per call of each kind of aten op, and the top ops."""
  import torch  # the benchmark's baseline; not a dependency of training

  with torch.profiler.profile(
    activities=[torch.profiler.ProfilerActivity.CPU]
  ) as prof:
    for _ in range(iters):
      call()
  per_op = {
    a.key: a.self_cpu_time_total * 1e-6 / iters
    for a in prof.key_averages()
    if a.key.startswith("aten::") and a.self_cpu_time_total > 0
  }
  return _summary(per_op, torch_kind, top)


def _summary(
  per_op: dict[str, float], kind_of: Callable[[str], str], top: int
) -> dict[str, Any]:
  by_kind = dict.fromkeys(KINDS, 0.0)
  for name, seconds in per_op.items():
    by_kind[kind_of(name)] += seconds
  ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
  return {
    "kinds_s": by_kind,
    "total_s": sum(by_kind.values()),
    "top": [(name, kind_of(name), s) for name, s in ranked],
  }


def format_summary(
  label: str, summary: dict[str, Any], per: str = "update"
) -> str:
  """Two lines: ms per kind with shares, then the top ops; `per` names
  what one profiled call is (an update, a sampler call)."""
  total = summary["total_s"] or float("nan")
  kinds = ", ".join(
    f"{k} {s * 1e3:.1f} ({100 * s / total:.0f}%)"
    for k, s in summary["kinds_s"].items()
  )
  tops = ", ".join(
    f"{name} [{kind}] {s * 1e3:.1f}" for name, kind, s in summary["top"]
  )
  return (
    f"{label} ops (ms per {per}, summed over threads: "
    f"{summary['total_s'] * 1e3:.1f}): {kinds}\n  top: {tops}"
  )
