"""The package's architecture rules, checked by walking every module's imports (AST only).

* `tff_gan` (the library) never imports `tasks`, `experiments` or `bin`;
* `tff_gan.core` never imports `tensorflow_federated`;
* imports point down the floors: a module imports nothing from a floor above its own;
* there is no import circle anywhere;
* no module of the library, the tasks or the experiments passes 400 lines.
"""

from __future__ import annotations

import ast
import os

import pytest
from conftest import REPO_ROOT

PACKAGES = ('tff_gan', 'tasks', 'experiments')
# Floors from the bottom up; a module may import its own floor and the ones below.
FLOORS = (
    ('tff_gan.choices', 'tff_gan.files'),
    ('tff_gan.core',),
    ('tff_gan.runtime',),
    ('tff_gan.clients',),
    ('tff_gan.privacy', 'tff_gan.secure'),
    ('tff_gan.algorithms',),
    ('tff_gan.run',),
    ('tasks',),
    ('experiments',),
)
MAX_LINES = 400


def module_name(path: str) -> str:
  relative = os.path.relpath(path, REPO_ROOT)[:-len('.py')].replace(os.sep, '.')
  return relative.removesuffix('.__init__')


def source_modules() -> dict[str, str]:
  """Module name -> path, for every module of `PACKAGES`."""
  modules = {}
  for package in PACKAGES:
    for root, _, names in os.walk(os.path.join(REPO_ROOT, package)):
      for name in names:
        if name.endswith('.py'):
          path = os.path.join(root, name)
          modules[module_name(path)] = path
  return modules


MODULES = source_modules()


def imported_modules(path: str) -> set[str]:
  """Every module `path` imports, at its top or inside functions, resolved to known names.

  `from a.b import c` counts as importing `a.b.c` when that is a module, else `a.b`.
  """
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        candidate = f'{node.module}.{alias.name}'
        found.add(candidate if candidate in MODULES else node.module)
  return found


GRAPH = {name: {m for m in imported_modules(path) if m in MODULES or m.split('.')[0] in
                ('tensorflow_federated', 'tasks', 'experiments', 'bin')}
         for name, path in MODULES.items()}


def floor(name: str) -> int:
  for level, prefixes in enumerate(FLOORS):
    if any(name == p or name.startswith(p + '.') for p in prefixes):
      return level
  raise AssertionError(f'{name} is on no floor: add it to FLOORS')


def test_every_module_is_on_a_floor():
  for name in MODULES:
    if name != 'tff_gan':
      floor(name)


def test_the_library_never_imports_the_application_layers():
  offenders = [f'{name} imports {imported}' for name, imports in GRAPH.items()
               if name.startswith('tff_gan') for imported in imports
               if imported.split('.')[0] in ('tasks', 'experiments', 'bin')]
  assert not offenders


def test_core_never_imports_tff():
  offenders = [f'{name} imports {imported}' for name, imports in GRAPH.items()
               if name.startswith('tff_gan.core') for imported in imports
               if imported.startswith('tensorflow_federated')]
  assert not offenders


def test_imports_point_down():
  offenders = []
  for name, imports in GRAPH.items():
    if name == 'tff_gan':
      continue
    for imported in imports:
      if imported in MODULES and imported != 'tff_gan' and floor(imported) > floor(name):
        offenders.append(f'{name} (floor {floor(name)}) imports {imported} '
                         f'(floor {floor(imported)})')
  assert not offenders


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle of `graph` as a list of nodes, or None (depth-first search, three colours)."""
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    stack.append(node)
    for neighbour in sorted(graph.get(node, ())):
      if state.get(neighbour) == 1:
        return stack[stack.index(neighbour):] + [neighbour]
      if neighbour not in state:
        cycle = visit(neighbour)
        if cycle:
          return cycle
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_no_import_circle():
  internal = {name: {m for m in imports if m in MODULES} for name, imports in GRAPH.items()}
  assert find_cycle(internal) is None, ' -> '.join(find_cycle(internal))


def test_cycle_finder_finds_a_planted_circle():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


@pytest.mark.parametrize('name', sorted(MODULES))
def test_module_is_at_most_400_lines(name):
  with open(MODULES[name]) as f:
    lines = sum(1 for _ in f)
  assert lines <= MAX_LINES, f'{name} has {lines} lines: split it by idea'
