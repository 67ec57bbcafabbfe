"""The dependency direction of docs/architecture.md, checked on every module's imports.

``d6_reports`` uses the OpenTelemetry API only and never imports the plugin. Inside
``otel_lineage`` arrows point down: ``startup`` -> ``capture`` -> ``delivery``; ``reading`` and
``cli`` -> ``delivery``; ``access`` (keys, roles, the access log) -> ``delivery`` and the root
only, and no lower stage imports ``access`` or ``web``; the root modules (record, semconv,
settings, ratelimit) import no stage (the package ``__init__`` is the public facade and
re-exports from all).
Only replay (``reading.verify``) may import ``d6_reports``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = (
    "capture",
    "delivery",
    "reading",
    "startup",
    "cli",
    "web",
    "access",
    "protection",
    "evidence",
)
#: What each part of otel_lineage must never import. ``protection`` (snapshot dedup and
#: encryption) sits beside ``delivery``: the store files snapshots through it, and it reads the
#: tables' definitions. ``evidence`` (seals) reads and writes rows through ``delivery`` only.
FORBIDDEN = {
    "delivery": ("capture", "reading", "startup", "cli", "web", "access", "evidence"),
    "protection": ("capture", "reading", "startup", "cli", "web", "access", "evidence"),
    "evidence": ("capture", "reading", "startup", "cli", "web", "access", "protection"),
    "capture": ("reading", "startup", "cli", "web", "access"),
    "reading": ("capture", "startup", "cli", "web", "access"),
    "access": ("capture", "reading", "startup", "cli", "web"),
    "web": ("capture", "startup", "cli"),
    "root": STAGES,
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("d6_reports"), ids=lambda p: p.name)
def test_the_service_uses_the_api_only_and_never_the_plugin(path: Path) -> None:
    bad = {n for n in _imports(path) if n.startswith(("otel_lineage", "opentelemetry.sdk"))}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _modules("otel_lineage"), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugin_imports_point_down(path: Path) -> None:
    relative = path.relative_to(ROOT / "otel_lineage")
    part = relative.parts[0] if len(relative.parts) > 1 else "root"
    if relative == Path("__init__.py"):
        part = "facade"  # the public API re-exports from every stage
    imports = _imports(path)
    for stage in FORBIDDEN.get(part, ()):
        bad = {
            n
            for n in imports
            if n == f"otel_lineage.{stage}" or n.startswith(f"otel_lineage.{stage}.")
        }
        assert not bad, f"{relative} ({part}) imports {sorted(bad)}"
    if relative != Path("reading/verify.py"):
        assert not {n for n in imports if n.startswith("d6_reports")}, relative
