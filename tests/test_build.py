"""BUILD is Starlark that Python's `ast` reads: its targets must name real files and cover the package."""

import ast
import glob
import os

from conftest import REPO_ROOT

RULES = ("py_library", "py_binary", "py_test")


def build_targets():
  with open(os.path.join(REPO_ROOT, "BUILD")) as f:
    tree = ast.parse(f.read(), filename="BUILD")
  targets = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in RULES:
      keywords = {k.arg: k.value for k in node.keywords}
      name = ast.literal_eval(keywords["name"])
      assert name not in targets, f"duplicate target {name}"
      targets[name] = {
          "rule": node.func.id,
          "srcs": ast.literal_eval(keywords.get("srcs", ast.List(elts=[]))),
          "deps": ast.literal_eval(keywords.get("deps", ast.List(elts=[]))),
      }
  return targets


def test_build_parses_and_declares_targets_of_each_kind():
  targets = build_targets()
  assert {t["rule"] for t in targets.values()} == set(RULES)
  assert targets["train"]["srcs"] == ["terse_tf/train.py"]


def test_every_src_exists_and_every_dep_is_a_target():
  targets = build_targets()
  for name, target in targets.items():
    for src in target["srcs"]:
      assert os.path.isfile(os.path.join(REPO_ROOT, src)), f"{name}: missing {src}"
    for dep in target["deps"]:
      assert dep.startswith(":") and dep[1:] in targets, f"{name}: unknown dep {dep}"


def test_targets_cover_every_module_and_test_file():
  covered = {src for target in build_targets().values() for src in target["srcs"]}
  python_files = {os.path.relpath(path, REPO_ROOT)
                  for pattern in ("terse_tf/**/*.py", "tests/*.py", "bench/*.py")
                  for path in glob.glob(os.path.join(REPO_ROOT, pattern), recursive=True)}
  assert python_files - covered == set()
  tests = {t["srcs"][0] for t in build_targets().values() if t["rule"] == "py_test"}
  assert tests == {f for f in python_files if os.path.basename(f).startswith("test_")}


def imported_modules(path):
  """The terse_tf modules a Python file imports, as file paths relative to the repository root."""
  with open(os.path.join(REPO_ROOT, path)) as f:
    tree = ast.parse(f.read(), filename=path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  files = set()
  for name in names:
    if name.split(".")[0] != "terse_tf" or name == "terse_tf":  # The bare package name imports nothing.
      continue
    stem = os.path.join(REPO_ROOT, *name.split("."))
    for candidate in (stem + ".py", os.path.join(stem, "__init__.py")):
      if os.path.isfile(candidate):
        files.add(os.path.relpath(candidate, REPO_ROOT))
  return files


def test_every_import_inside_the_package_is_a_declared_dependency():
  targets = build_targets()
  owner = {src: name for name, target in targets.items() for src in target["srcs"]}

  def reachable(name, seen=None):
    seen = set() if seen is None else seen
    if name not in seen:
      seen.add(name)
      for dep in targets[name]["deps"]:
        reachable(dep[1:], seen)
    return seen

  for name, target in targets.items():
    if target["rule"] == "py_test":
      continue
    for src in target["srcs"]:
      for module in imported_modules(src):
        assert owner[module] in reachable(name), f"{name}: {src} imports {module} ({owner[module]}) " \
                                                 "without a dependency on it"
