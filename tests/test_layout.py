"""The house rules of the import graph, read from the source with `ast` (nothing is imported):

- `frontend_shim` borrows only the common core: it never imports `services.audio`, `services.display` or
  `services.input` (what both ends share lives in `services/devices/` and `services/common/`);
- a service never imports another service, and the common core imports no service and no shim;
- no import circles between modules (lazy imports inside functions count too).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("frontend_shim", "services")
SERVICES = ("services.audio", "services.display", "services.input")
CORE = ("services.common", "services.devices")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (a `from X import Y` names X.Y when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return {m for m in found if m in known}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) - {name} for name, path in modules.items()}


def _within(module: str, packages: tuple[str, ...]) -> str | None:
    return next((p for p in packages if module == p or module.startswith(p + ".")), None)


def test_the_graph_is_read() -> None:
    graph = _graph()
    # Sanity: the reader sees the edges it must judge, so an empty graph cannot pass the rules below.
    assert "services.devices.es1370" in graph["frontend_shim.links.audio"]
    assert "services.common.server" in graph["services.audio.__main__"]


def test_shim_borrows_only_the_common_core() -> None:
    bad = [
        f"{m} imports {d}"
        for m, deps in _graph().items()
        if m.startswith("frontend_shim")
        for d in deps
        if _within(d, SERVICES)
    ]
    assert not bad, "frontend_shim may import only services.common and services.devices:\n" + "\n".join(bad)


def test_no_service_imports_another() -> None:
    bad = []
    for m, deps in _graph().items():
        own = _within(m, SERVICES)
        for d in deps:
            other = _within(d, SERVICES)
            if other and other != own:
                bad.append(f"{m} imports {d}")
    assert not bad, "\n".join(bad)


def test_the_core_imports_no_service_and_no_shim() -> None:
    bad = [
        f"{m} imports {d}"
        for m, deps in _graph().items()
        if _within(m, CORE)
        for d in deps
        if _within(d, SERVICES) or d.startswith("frontend_shim")
    ]
    assert not bad, "\n".join(bad)
    bad = [f"{m} imports {d}" for m, deps in _graph().items() if m.startswith("services") for d in deps
           if d.startswith("frontend_shim")]  # fmt: skip
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)
