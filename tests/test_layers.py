"""genforge's layers, read from the source with `ast` (nothing is imported): no import cycles between its units,
and the layer rules below. An exception is listed here with its reason, so that a new violation still fails.

A unit is a subpackage (genforge.evaluation, genforge.serving, ...) or a top-level module (genforge.artifacts);
the package root (genforge/__init__.py) is the unit "genforge". Every import counts, also one inside a function
(it runs when the function does) or under `if TYPE_CHECKING:`, except for the torch rule, which is about what
importing a module runs.
"""

from __future__ import annotations

import ast
import functools
import itertools
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "genforge"

# Imports that break a rule for a reason that cannot be fixed by moving an import: (importing module, imported
# module) -> why. Each is exempt from the cycle and layer checks, and must still exist (a stale one fails).
EXCEPTIONS: dict[tuple[str, str], str] = {
    # none today: the two cycles this test found first (marking -> the package root for __version__, music.events ->
    # data.registry for cache_dir) were fixed by moving those names into leaf modules (version.py, cache.py)
}

# The units below the domain layers: what genforge.models, data, media and diffusion may import. errors, files,
# cache and version are leaf modules; audio (mu-law, spectrogram codec) imports nothing from genforge; music is the symbolic-music
# library (notes, ABC, events); tokenizers and text_jobs are the torch-free text-generation plumbing that the torch
# models (models/sampling.py) and the onnx runtime share. They import only each other (test_foundation_is_closed).
FOUNDATION = {"genforge.errors", "genforge.files", "genforge.cache", "genforge.version", "genforge.audio",
              "genforge.music", "genforge.tokenizers", "genforge.text_jobs"}
LOWER_LAYERS = ("genforge.models", "genforge.data", "genforge.media", "genforge.diffusion")


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    target: str  # the genforge module it runs (a package's __init__ for a name defined there)
    line: int
    statement: str
    module_level: bool  # runs when the importer is imported (not inside a function, not under TYPE_CHECKING)

    def where(self) -> str:
        path = module_files()[self.importer].relative_to(SRC.parent)
        return f"{path}:{self.line}: {self.statement}"


def unit(module: str) -> str:
    """genforge.evaluation.runner -> genforge.evaluation; genforge.artifacts -> itself; genforge -> genforge."""
    return ".".join(module.split(".")[:2])


@functools.cache
def module_files() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _existing(name: str) -> str:
    """The module `import name` runs last: name itself, or the package holding the attribute it names."""
    files = module_files()
    while name not in files:
        name = name.rpartition(".")[0]
    return name


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk(statements: list[ast.stmt], module_level: bool = True):
    """(import statement, runs at import time) for every import among `statements` and the blocks inside them
    (an import is a statement, so expressions are never entered)."""
    for stmt in statements:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            yield stmt, module_level
            continue
        if _is_type_checking(stmt):
            yield from _walk(stmt.body, False)
            yield from _walk(stmt.orelse, module_level)
            continue
        inner = module_level and not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef))
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            for block in getattr(stmt, name, None) or ():
                if isinstance(block, (ast.excepthandler, ast.match_case)):
                    yield from _walk(block.body, inner)
                else:
                    yield from _walk([block], inner)


@functools.cache
def parsed() -> dict[str, tuple[tuple[Import, ...], tuple[tuple[int, str, bool], ...]]]:
    """module -> (its imports of genforge modules, its imports of anything: (line, top-level name, module level))."""
    files = module_files()
    out = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        internal, external = [], []
        for node, module_level in _walk(tree.body):
            text = ast.unparse(node)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    external.append((node.lineno, alias.name.split(".")[0], module_level))
                    if alias.name.split(".")[0] == "genforge":
                        internal.append(Import(module, _existing(alias.name), node.lineno, text, module_level))
                continue
            base = node.module or ""
            if node.level:  # relative: from . import x / from .notes import y
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            external.append((node.lineno, base.split(".")[0], module_level))
            if base.split(".")[0] != "genforge":
                continue
            for alias in node.names:  # `from genforge.x import y`: the submodule y if there is one, else x
                sub = f"{base}.{alias.name}"
                target = sub if sub in files else _existing(base)
                internal.append(Import(module, target, node.lineno, text, module_level))
        out[module] = (tuple(internal), tuple(external))
    return out


def imports() -> list[Import]:
    return [imp for internal, _ in parsed().values() for imp in internal]


def checked_imports() -> list[Import]:
    """Imports between different units, less the listed exceptions."""
    return [imp for imp in imports()
            if unit(imp.importer) != unit(imp.target) and (imp.importer, imp.target) not in EXCEPTIONS]


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(sorted(component))
    return out


def _a_cycle(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One shortest cycle through the component's first unit, as a list of units that ends where it starts."""
    start = component[0]
    members = set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    return paths[node] + [start]
                if child not in paths:
                    paths[child] = paths[node] + [child]
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # cannot happen in a strongly connected component


def test_the_graph_sees_every_kind_of_import():
    """A parser that silently found nothing would pass every rule: a few imports it must see, and how."""
    found = {(imp.importer, imp.target): imp.module_level for imp in imports()}
    assert found[("genforge.training.loop", "genforge.artifacts")] is True  # import genforge.<submodule> as name
    assert found[("genforge.training.loop", "genforge.training.checkpoint")] is True  # from <package> import <submodule>
    assert found[("genforge", "genforge.artifacts")] is False  # inside a function
    assert found[("genforge.music.abc", "genforge.music.notes")] is True  # relative
    assert found[("genforge.doctor", "genforge")] is False  # import genforge: the package root
    assert ("genforge.evaluation", "genforge.evaluation.evaluator") in found
    tokenizers_torch = [module_level for _, name, module_level in parsed()["genforge.tokenizers"][1] if name == "torch"]
    assert tokenizers_torch and not any(tokenizers_torch)  # under `if TYPE_CHECKING:` and inside functions only


def test_no_import_cycles_between_units():
    graph: dict[str, set[str]] = {unit(m): set() for m in module_files()}
    lines: dict[tuple[str, str], list[str]] = {}
    for imp in checked_imports():
        edge = (unit(imp.importer), unit(imp.target))
        graph[edge[0]].add(edge[1])
        lines.setdefault(edge, []).append(imp.where())
    report = []
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        cycle = _a_cycle(component, graph)
        report.append(f"cycle {' -> '.join(cycle)} (the units {', '.join(component)} all reach each other):")
        for a, b in itertools.pairwise(cycle):
            report.append(f"  {a} -> {b}:")
            report += [f"    {line}" for line in dict.fromkeys(lines[(a, b)])]
    assert not report, "import cycles between genforge's units:\n" + "\n".join(report)


def test_listed_exceptions_still_exist():
    present = {(imp.importer, imp.target) for imp in imports()}
    stale = [f"{a} -> {b}" for a, b in EXCEPTIONS if (a, b) not in present]
    assert not stale, f"listed exceptions that the code no longer has (drop them): {stale}"


def _violations(rule) -> list[str]:
    return list(dict.fromkeys(f"{imp.where()}  ({unit(imp.importer)} -> {unit(imp.target)})"
                              for imp in checked_imports() if rule(imp)))


def test_nothing_imports_the_cli():
    bad = _violations(lambda imp: unit(imp.target) == "genforge.cli" and imp.importer != "genforge.__main__")
    assert not bad, "only the CLI may import genforge.cli:\n" + "\n".join(bad)


def test_only_the_cli_imports_serving():
    bad = _violations(lambda imp: unit(imp.target) == "genforge.serving" and unit(imp.importer) != "genforge.cli")
    assert not bad, "only genforge.serving and genforge.cli may import genforge.serving:\n" + "\n".join(bad)


def test_lower_layers_import_only_the_foundation():
    bad = _violations(lambda imp: unit(imp.importer) in LOWER_LAYERS and unit(imp.target) not in FOUNDATION)
    assert not bad, (f"{', '.join(LOWER_LAYERS)} may import from genforge only {', '.join(sorted(FOUNDATION))}:\n"
                     + "\n".join(bad))


def test_foundation_is_closed():
    bad = _violations(lambda imp: unit(imp.importer) in FOUNDATION and unit(imp.target) not in FOUNDATION)
    assert not bad, "the foundation units may import only each other:\n" + "\n".join(bad)


def _imports_torch_at_module_level(module: str) -> list[int]:
    return [line for line, name, module_level in parsed()[module][1] if module_level and name == "torch"]


def test_runtime_does_not_import_torch():
    """The onnx runtime serves without torch: no runtime module imports torch when it is imported, nor does any
    genforge module that importing it runs (its module-level imports, and the packages above them)."""
    files = module_files()
    runs: dict[str, set[str]] = {m: set() for m in files}
    for imp in imports():
        if imp.module_level:
            target = imp.target
            while True:  # importing genforge.a.b runs genforge.a (and genforge) first
                runs[imp.importer].add(target)
                if "." not in target:
                    break
                target = target.rpartition(".")[0]
    bad = []
    for start in sorted(m for m in files if unit(m) == "genforge.runtime"):
        bad += [f"{files[start].relative_to(SRC.parent)}:{line}: imports torch" for line in
                _imports_torch_at_module_level(start)]
        via = {start: [start]}  # breadth-first, keeping the path, so that a failure names the chain of imports
        frontier = [start]
        while frontier:
            nxt_frontier = []
            for m in frontier:
                for nxt in sorted(runs[m]):
                    if nxt not in via:
                        via[nxt] = via[m] + [nxt]
                        nxt_frontier.append(nxt)
            frontier = nxt_frontier
        for m, chain in sorted(via.items()):
            if m != start and _imports_torch_at_module_level(m):
                bad.append(f"{start} imports torch via {' -> '.join(chain)} "
                           f"({files[m].relative_to(SRC.parent)}:{_imports_torch_at_module_level(m)[0]})")
    assert not bad, "genforge.runtime must not import torch at import time:\n" + "\n".join(bad)
