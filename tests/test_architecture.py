"""The package's import graph, read from the source with ``ast`` (imports inside functions too).

Three rules of ``docs/ARCHITECTURE.md``: no import cycles; no ``from x import _private`` across
modules (a name used elsewhere is public, in its rightful home); every import points down the
layers. The checker is tested on small packages written to ``tmp_path``, so it can fail.
"""

from __future__ import annotations

import ast
import itertools
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "audiomaepp"

# Bottom to top. A module may import its own top-level package and any package of a lower layer;
# packages of one layer do not import each other. The root ``audiomaepp/__init__.py`` (version,
# lazy re-exports) is outside the layers.
LAYERS: list[set[str]] = [
    {"errors"},  # ground: the exception types
    {"fileio", "workers", "devices", "seeds", "settings"},  # ground: writes, pool, seeds, knobs
    {"frontend"},  # FrontendConfig: 16 kHz, the mel geometry
    {"audio"},  # decoding any file to 16 kHz mono
    {"model"},  # config, layers, AudioMAE, model directories, Hub resolution, model specs
    {"embedding", "data", "synth"},  # files -> embeddings; audio -> shards -> crops; demo corpus
    {"training", "hear", "export"},  # the loop; the HEAR API; ONNX + Hub deployment
    {"evaluation"},  # tasks, probes, results, reports
    {"finetune"},  # classifier, recipe, `evaluate --mode finetune`
    {"demo"},
    {"cli"},
]


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # the module imported (``from a.b import c``: ``a.b.c`` if it is a module)
    name: str | None  # the attribute taken from ``target`` (None: the module itself)
    line: int


def find_modules(src: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` under ``src``."""
    mods = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of ``from <node.level dots><node.module> import ...``."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def find_imports(src: Path, package: str) -> list[Import]:
    """Every import of a package module by a package module, wherever it sits in the file."""
    mods = find_modules(src, package)
    found = []
    for module, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [
                    Import(module, a.name, None, node.lineno)
                    for a in node.names
                    if a.name == package or a.name.startswith(package + ".")
                ]
            elif isinstance(node, ast.ImportFrom):
                target = _absolute(module, is_package, node)
                if target != package and not target.startswith(package + "."):
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    found.append(
                        Import(module, sub, None, node.lineno)
                        if sub in mods
                        else Import(module, target, a.name, node.lineno)
                    )
    return found


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """Module -> modules it imports, including the ``__init__`` of every package it enters from
    outside (``import a.b.c`` runs ``a.b``'s ``__init__`` too)."""
    graph: dict[str, set[str]] = {m: set() for m in find_modules(src, package)}
    for imp in find_imports(src, package):
        parts = imp.target.split(".")
        for i in range(1, len(parts) + 1):
            ancestor = ".".join(parts[:i])
            if ancestor != imp.importer and not imp.importer.startswith(ancestor + "."):
                graph[imp.importer].add(ancestor)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path ``a -> b -> ... -> a``) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(_cycle_through(v, component, graph))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _cycle_through(start: str, component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path ``start -> ... -> start`` inside ``component`` (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("not a cycle")


def private_imports(src: Path, package: str) -> list[Import]:
    """``from x import _name`` in any module but ``x`` itself (dunders such as ``__version__``
    are public); a ``_module`` counts as private outside its own package."""
    bad = []
    for imp in find_imports(src, package):
        if imp.name is not None:
            if imp.name.startswith("_") and not imp.name.startswith("__"):
                bad.append(imp)
            continue
        leaf = imp.target.rsplit(".", 1)[-1]
        home = imp.target.rsplit(".", 1)[0]
        if leaf.startswith("_") and not leaf.startswith("__"):
            if imp.importer != home and not imp.importer.startswith(home + "."):
                bad.append(imp)
    return bad


def private_attribute_uses(src: Path, package: str) -> list[str]:
    """``mod._name`` where ``mod`` is a package module bound by an import (``from . import mod``,
    ``import pkg.mod as mod``) in another module."""
    mods = find_modules(src, package)
    bad = []
    for module, path in mods.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        bound: dict[str, str] = {}  # local name -> module
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bound |= {a.asname: a.name for a in node.names if a.asname and a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                target = _absolute(module, is_package, node)
                for a in node.names:
                    if f"{target}.{a.name}" in mods:
                        bound[a.asname or a.name] = f"{target}.{a.name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and bound.get(node.value.id, module) != module
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{module}:{node.lineno} {node.value.id}.{node.attr}")
    return bad


def _layer_of(module: str, package: str) -> tuple[str, int] | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the root package
    top = parts[1]
    for rank, layer in enumerate(LAYERS):
        if top in layer:
            return top, rank
    raise AssertionError(f"{module}: package {top!r} is in no layer of LAYERS; add it")


def upward_imports(src: Path, package: str) -> list[str]:
    """Imports that do not point down the layers (same top-level package excepted)."""
    bad = []
    for imp in find_imports(src, package):
        here, there = _layer_of(imp.importer, package), _layer_of(imp.target, package)
        if here is None or there is None or here[0] == there[0]:
            continue
        if there[1] >= here[1]:
            bad.append(f"{imp.importer}:{imp.line} imports {imp.target} ({here[0]} -> {there[0]})")
    return bad


# ---- the package ------------------------------------------------------------------------------
def test_the_package_has_no_import_cycles():
    cycles = find_cycles(import_graph(SRC, PACKAGE))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_name_is_imported_across_modules():
    bad = private_imports(SRC, PACKAGE)
    assert not bad, "private imports:\n" + "\n".join(
        f"{i.importer}:{i.line} from {i.target} import {i.name or i.target}" for i in bad
    )


def test_no_private_attribute_of_another_module_is_used():
    bad = private_attribute_uses(SRC, PACKAGE)
    assert not bad, "private attributes of other modules:\n" + "\n".join(bad)


def test_every_import_points_down_the_layers():
    bad = upward_imports(SRC, PACKAGE)
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_the_checker_sees_the_whole_package():
    mods = find_modules(SRC, PACKAGE)
    imports = find_imports(SRC, PACKAGE)
    assert {"audiomaepp.model.io", "audiomaepp.cli.main", "audiomaepp"} <= set(mods)
    lazy = [i for i in imports if i.importer == "audiomaepp" and i.target == "audiomaepp.model"]
    assert lazy, "the root package's lazy import of model/ (inside __getattr__) was not seen"


# ---- the checker, on packages that break the rules -----------------------------------------------
def _write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_a_lazy_cycle_is_found(tmp_path):
    src = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "low/__init__.py": "from .core import f\n",
            "low/core.py": "def f():\n    from ..high.top import g  # lazy, upward\n    return g\n",
            "high/__init__.py": "",
            "high/top.py": "from pkg.low import core\ng = core\n",
        },
    )
    graph = import_graph(src, "pkg")
    cycles = find_cycles(graph)
    assert len(cycles) == 1
    cycle = cycles[0]
    assert {"pkg.low.core", "pkg.high.top"} <= set(cycle) and cycle[0] == cycle[-1]
    assert all(b in graph[a] for a, b in itertools.pairwise(cycle))  # along real imports


def test_a_cycle_through_a_package_init_is_found(tmp_path):
    # b imports a.x, which runs a/__init__.py, which imports b: a cycle no module names directly
    src = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a/__init__.py": "from pkg import b\n",
            "a/x.py": "X = 1\n",
            "b.py": "from pkg.a.x import X\n",
        },
    )
    assert [set(c) for c in find_cycles(import_graph(src, "pkg"))] == [{"pkg.a", "pkg.b"}]


def test_an_acyclic_package_passes(tmp_path):
    src = _write_package(
        tmp_path,
        {
            "__init__.py": "from .a import A\n",
            "a.py": "from . import b\nA = b.B\n",
            "b.py": "B = 1\n",
        },
    )
    assert find_cycles(import_graph(src, "pkg")) == []


def test_private_names_across_modules_are_found(tmp_path):
    src = _write_package(
        tmp_path,
        {
            "__init__.py": "from . import __about__\n__version__ = '1'\n",
            "__about__.py": "",
            "a.py": "_hidden = 1\npublic = _hidden\n",
            "b.py": "def f():\n    from .a import _hidden, public\n    return _hidden, public\n",
            "c.py": "from . import __version__\nfrom pkg.a import public\n",
            "sub/__init__.py": "from . import _impl\n",  # a package's own private module: fine
            "sub/_impl.py": "",
            "d.py": "from pkg.sub import _impl\n",  # from outside: private
        },
    )
    bad = {(i.importer, i.name or i.target) for i in private_imports(src, "pkg")}
    assert bad == {("pkg.b", "_hidden"), ("pkg.d", "pkg.sub._impl")}


def test_private_attributes_of_imported_modules_are_found(tmp_path):
    src = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "_hidden = 1\n",
            "b.py": "from . import a\nimport pkg.a as m\nx = a._hidden + m._hidden + a.__name__\n",
            "c.py": "import json\nclass C:\n    _own = 1\n    def f(self):\n"
            "        return self._own, json._default_decoder\n",  # not package modules
        },
    )
    assert private_attribute_uses(src, "pkg") == ["pkg.b:3 a._hidden", "pkg.b:3 m._hidden"]


def test_upward_imports_are_found(tmp_path):
    src = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "model/__init__.py": "from ..errors import *\n",
            "model/mae.py": "def f():\n    from ..export import hub\n",  # up
            "export/__init__.py": "",
            "export/hub.py": "from ..model import mae\n",  # down: fine
            "data.py": "from .embedding import x\n",  # sideways (one layer)
            "embedding.py": "x = 1\n",
        },
    )
    bad = upward_imports(src, "pkg")
    assert len(bad) == 2
    assert bad[0].startswith("pkg.data:1 imports pkg.embedding (data -> embedding)")
    assert bad[1].startswith("pkg.model.mae:2 imports pkg.export.hub (model -> export)")


def test_a_package_outside_the_layers_is_reported(tmp_path):
    src = _write_package(tmp_path, {"__init__.py": "", "newthing.py": "from . import errors\n"})
    (src / "pkg" / "errors.py").write_text("")
    with pytest.raises(AssertionError, match="newthing"):
        upward_imports(src, "pkg")
