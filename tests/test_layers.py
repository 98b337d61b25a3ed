"""The house rules, as tests: the import graph is a DAG read bottom-up, and code stays readable.

Every import counts, function-local ones too (AST walk). Layers, bottom-up (docs/ARCHITECTURE.md):

    versions, runtime, integrity                       base: import nothing of the project
    diffusion, parallel, metrics                       pure math, sharding, metrics and files
    data (-> metrics), model (-> parallel), superres   superres: cascade degradation, augmentation
    config                                             the typed experiment config
    denoiser (model + diffusion), checkpoints (config) where model meets diffusion; the disk format
    generation                                         sampler, planning, running, writing
    train, evaluation                                  the trainer and the evaluation orchestrator
    study                                              studies: train.py and evaluate.py runs, tables
"""

import ast
import graphlib
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "vdm_jax")

# unit -> the units it may import (a unit is a top-level module or subpackage of vdm_jax).
ALLOWED = {
    "versions": set(),
    "runtime": set(),
    "diffusion": set(),
    "parallel": set(),
    "metrics": {"runtime", "versions"},
    "data": {"metrics", "runtime"},
    "model": {"parallel"},
    "superres": set(),
    "config": {"data", "diffusion", "model", "parallel", "superres"},
    "denoiser": {"diffusion", "model"},
    "integrity": set(),
    "checkpoints": {"config", "integrity", "versions"},
    "generation": {"checkpoints", "config", "data", "denoiser", "diffusion", "metrics", "model",
                   "parallel", "superres", "versions"},
    "train": {"checkpoints", "config", "data", "denoiser", "diffusion", "generation", "metrics",
              "model", "parallel", "runtime", "superres", "versions"},
    "evaluation": {"data", "generation", "metrics", "versions"},
    "study": {"config", "evaluation", "versions"},
}
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400
CHECKED_DIRS = ("vdm_jax", "configs", "scripts", "benchmarks")
CHECKED_FILES = ("train.py", "sample.py")


def _python_files(root: str) -> list[str]:
  found = []
  for folder, _, names in os.walk(root):
    found += [os.path.join(folder, n) for n in names if n.endswith(".py")]
  return sorted(found)


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path: str) -> set[str]:
  """Every vdm_jax module imported anywhere in the file (module level or inside functions)."""
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from pkg import name`: the submodule pkg.name if there is one, else pkg (_existing).
      found.update(f"{node.module}.{a.name}" for a in node.names)
  return {m for m in found if m == "vdm_jax" or m.startswith("vdm_jax.")}


def _existing(name: str, modules: set[str]) -> str | None:
  """The longest prefix of a dotted name that is a module of the package."""
  while name and name not in modules:
    name = name.rpartition(".")[0]
  return name or None


def _unit(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def module_graph() -> dict[str, set[str]]:
  """vdm_jax module -> the vdm_jax modules it imports."""
  files = {_module_name(p): p for p in _python_files(PACKAGE)}
  modules = set(files)
  return {m: {e for e in (_existing(i, modules) for i in _imports(p)) if e and e != m}
          for m, p in files.items()}


def test_every_unit_is_in_the_layer_table():
  units = {_unit(m) for m in module_graph()} - {None}
  assert units == set(ALLOWED), "add the new unit to ALLOWED (and docs/ARCHITECTURE.md)"


def test_units_import_only_the_layers_below_them():
  bad = []
  for module, imports in module_graph().items():
    unit = _unit(module)
    for imported in imports:
      other = _unit(imported)
      if unit and other and other != unit and other not in ALLOWED[unit]:
        bad.append(f"{module} imports {imported}")
  assert not bad, "layer contract broken:\n" + "\n".join(sorted(bad))


def test_the_layer_table_and_the_module_graph_have_no_cycles():
  graphlib.TopologicalSorter(ALLOWED).prepare()  # raises CycleError
  try:
    graphlib.TopologicalSorter(module_graph()).prepare()
  except graphlib.CycleError as e:
    pytest.fail(f"import cycle between modules: {e.args[1]}")


def test_configs_import_only_the_experiment_config():
  for path in _python_files(os.path.join(REPO, "configs")):
    assert {i.rpartition(".")[0] for i in _imports(path)} <= {"vdm_jax.config"}, path


def _checked_files() -> list[str]:
  paths = [os.path.join(REPO, f) for f in CHECKED_FILES]
  for folder in CHECKED_DIRS:
    paths += _python_files(os.path.join(REPO, folder))
  return paths


def test_files_and_functions_stay_short():
  long = []
  for path in _checked_files():
    source = open(path, encoding="utf-8").read()
    rel = os.path.relpath(path, REPO)
    if source.count("\n") > MAX_FILE_LINES:
      long.append(f"{rel}: {source.count(chr(10))} lines > {MAX_FILE_LINES}")
    for node in ast.walk(ast.parse(source, path)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES:
          long.append(f"{rel}:{node.lineno} {node.name}() {lines} lines > {MAX_FUNCTION_LINES}")
  assert not long, "split these:\n" + "\n".join(long)


def test_the_checker_sees_function_local_imports(tmp_path):
  """The graph is built from every import statement, not only the module-level ones."""
  path = tmp_path / "m.py"
  path.write_text("def f():\n  from vdm_jax.train import loop\n  import vdm_jax.generation\n")
  assert _imports(str(path)) == {"vdm_jax.train.loop", "vdm_jax.generation"}
