"""The packages of stepjax import each other without cycles.

Every `import` and `from ... import` in stepjax/ (module level or inside a
function alike: a lazy import is still a dependency) is read with `ast`,
and each edge is mapped to the packages it joins: a subpackage (train,
eval, rl, ...) or, for modules directly under stepjax/, the module itself
(errors, rows, jobs, ...). The graph must be acyclic; in particular train/
never imports eval/ (the trainer gets its evaluator from stepjax/jobs.py).
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "stepjax"


def _node(module: str) -> str | None:
  """The graph node of a stepjax module name ("stepjax.train.loop" ->
  "train", "stepjax.errors" -> "errors"), None outside stepjax."""
  parts = module.split(".")
  if parts[0] != "stepjax" or len(parts) < 2:
    return None
  return parts[1]


def _imports(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.add(node.module)
      # `from stepjax import rows` imports the module stepjax.rows.
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return names


def package_graph() -> dict[str, set[str]]:
  graph: dict[str, set[str]] = {}
  for path in ROOT.rglob("*.py"):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    src = _node(".".join(parts))
    for name in _imports(path):
      dst = _node(name)
      known = dst and ((ROOT / dst).is_dir() or (ROOT / f"{dst}.py").exists())
      if known and dst != src:
        graph.setdefault(src, set()).add(dst)
  return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle as a path of nodes, or None."""
  state: dict[str, int] = {}  # 1 = on the stack, 2 = done
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt) :] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_no_import_cycle_between_packages():
  graph = package_graph()
  assert {"train", "eval", "rl", "sampling", "models", "data"} <= set(graph)
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))
  assert "eval" not in graph["train"]
  assert "train" in graph["eval"]  # eval uses the trainer's pieces


def test_the_cycle_finder_finds_cycles():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None
  assert _cycle({"train": {"eval"}, "eval": {"train"}}) == [
    "eval",
    "train",
    "eval",
  ]
