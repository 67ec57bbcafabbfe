"""Versioned report templates: discovery, content hashes, the lock file and compilation.

A template version is a directory ``templates/<name>/<version>/`` holding ``report.html.j2``
and its assets. Its identity is the sha256 over every file (relative path and bytes, in sorted
order), so a lineage row can prove which exact content rendered a PDF. Released versions are
pinned in ``templates.lock.json``; a released version whose files change without a new version
number is caught by the test suite, and "latest" means the newest *released* version.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from d6_reports.errors import TemplateNotFoundError, TemplateRenderError

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
LOCK_FILE = "templates.lock.json"
#: The render variable through which a PDF names its own lineage: its report generation id,
#: template name and version and inputs sha256. Versions that print it (audit_report 2.1.0 and
#: summary 1.1.0 on) put it in ``<meta name="d6.*">`` (the PDF's metadata) and in every page's
#: footer; earlier versions ignore it, so their PDFs stay byte for byte what they were.
LINEAGE_VARIABLE = "lineage"
ENTRY_POINT = "report.html.j2"


def parse_version(version: str) -> tuple[int, ...]:
    """``"1.10.0"`` -> ``(1, 10, 0)``; raises ``ValueError`` for anything else."""
    parts = version.split(".")
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a numeric dotted version: {version!r}")
    return tuple(int(p) for p in parts)


def content_sha256(directory: Path) -> str:
    """sha256 over every file below ``directory``: relative path, NUL, size, NUL, bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if "__pycache__" in path.parts:
            continue
        data = path.read_bytes()
        rel = path.relative_to(directory).as_posix()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class TemplateVersion:
    """One installed version of one template."""

    name: str
    version: str
    directory: Path
    sha256: str
    released: bool

    @property
    def base_url(self) -> str:
        """The URL the template's relative asset references resolve against."""
        return self.directory.as_uri() + "/"


class TemplateRegistry:
    """Finds template versions under a root directory and compiles each once.

    Compiled templates are cached per (name, version); the sandboxed environment with
    autoescape and ``StrictUndefined`` means data can neither run code nor inject markup, and a
    template referring to a missing field fails loudly instead of printing nothing.
    """

    def __init__(self, root: Path = TEMPLATES_DIR) -> None:
        self.root = root
        self._lock_data: dict[str, dict[str, str]] = self._read_lock()
        self._versions: dict[tuple[str, str], TemplateVersion] = {}
        self._compiled: dict[tuple[str, str], Template] = {}
        self._mutex = threading.Lock()

    def _read_lock(self) -> dict[str, dict[str, str]]:
        path = self.root / LOCK_FILE
        if not path.exists():
            return {}
        data: dict[str, dict[str, str]] = orjson.loads(path.read_bytes())
        return data

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name[0] != "_")

    def versions(self, name: str) -> list[str]:
        """Installed versions of ``name``, oldest first."""
        directory = self.root / name
        if not directory.is_dir():
            return []
        found = [p.name for p in directory.iterdir() if (p / ENTRY_POINT).is_file()]
        return sorted((v for v in found if _is_version(v)), key=parse_version)

    def released_versions(self, name: str) -> list[str]:
        locked = self._lock_data.get(name, {})
        return [v for v in self.versions(name) if v in locked]

    def locked_sha256(self, name: str, version: str) -> str | None:
        return self._lock_data.get(name, {}).get(version)

    def resolve(self, name: str, version: str | None = None) -> TemplateVersion:
        """The requested version, or the latest released one when ``version`` is None."""
        if version is None:
            released = self.released_versions(name)
            if not released:
                raise TemplateNotFoundError(
                    f"template {name!r} has no released version "
                    f"(installed: {', '.join(self.versions(name)) or 'none'})"
                )
            version = released[-1]
        key = (name, version)
        with self._mutex:
            cached = self._versions.get(key)
        if cached is not None:
            return cached
        if version not in self.versions(name):
            installed = ", ".join(self.versions(name)) or "none"
            raise TemplateNotFoundError(
                f"template {name!r} has no version {version!r} (installed: {installed})"
            )
        directory = self.root / name / version
        resolved = TemplateVersion(
            name=name,
            version=version,
            directory=directory,
            sha256=content_sha256(directory),
            released=version in self._lock_data.get(name, {}),
        )
        with self._mutex:
            self._versions[key] = resolved
        return resolved

    def compile(self, template: TemplateVersion) -> Template:
        """The compiled entry point of ``template``, compiled on first use only."""
        key = (template.name, template.version)
        with self._mutex:
            compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled
        env = SandboxedEnvironment(
            loader=FileSystemLoader(template.directory),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        try:
            compiled = env.get_template(ENTRY_POINT)
        except TemplateError as exc:
            raise TemplateRenderError(
                f"template {template.name} {template.version} does not compile: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        with self._mutex:
            self._compiled[key] = compiled
        return compiled

    def render_report(
        self,
        template: TemplateVersion,
        inputs: dict[str, Any],
        *,
        generation_id: str,
        inputs_sha256: str,
    ) -> str:
        """The report's HTML: ``inputs`` plus the ``lineage`` variable (see ``LINEAGE_VARIABLE``).

        The generator and ``verify`` both render through here, so a replay with the recorded id
        and digest gives the same HTML, hence the same PDF, as the original.
        """
        lineage = {
            "generation_id": generation_id,
            "template_name": template.name,
            "template_version": template.version,
            "inputs_sha256": inputs_sha256,
        }
        return self.render(template, {**inputs, LINEAGE_VARIABLE: lineage})

    def render(self, template: TemplateVersion, context: dict[str, Any]) -> str:
        try:
            return self.compile(template).render(context)
        except TemplateRenderError:
            raise
        except Exception as exc:  # any failure inside the template is the template's failure
            raise TemplateRenderError(
                f"template {template.name} {template.version} failed to render: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def compute_lock(self) -> dict[str, dict[str, str]]:
        """Hashes of every installed version, for writing a new lock after a release."""
        return {
            name: {v: content_sha256(self.root / name / v) for v in self.versions(name)}
            for name in self.names()
        }


def _is_version(text: str) -> bool:
    try:
        parse_version(text)
    except ValueError:
        return False
    return True
