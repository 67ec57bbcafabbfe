from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from d6_reports.errors import TemplateNotFoundError, TemplateRenderError
from d6_reports.inputs import load_inputs
from d6_reports.models import Base
from d6_reports.seed import seed_demo
from d6_reports.templates import TEMPLATES_DIR, TemplateRegistry, content_sha256, parse_version


def test_released_versions_match_their_lock() -> None:
    """A released template's files may not change without a new version number."""
    registry = TemplateRegistry()
    released = [(n, v) for n in registry.names() for v in registry.released_versions(n)]
    for name, version in [
        ("audit_report", "1.0.0"),
        ("audit_report", "2.0.0"),
        ("audit_report", "2.0.1"),
        ("summary", "1.0.0"),
        ("summary", "1.0.1"),
    ]:
        assert (name, version) in released
    for name, version in released:
        assert content_sha256(TEMPLATES_DIR / name / version) == registry.locked_sha256(
            name, version
        ), f"{name} {version} changed after release: bump the version and re-lock"


def test_content_hash_covers_every_file_and_path(tmp_path: Path) -> None:
    copy = tmp_path / "t" / "1.0.0"
    shutil.copytree(TEMPLATES_DIR / "audit_report" / "1.0.0", copy)
    original = content_sha256(copy)
    (copy / "style.css").write_text((copy / "style.css").read_text() + "\n")
    edited = content_sha256(copy)
    assert edited != original
    (copy / "style.css").rename(copy / "style2.css")
    assert content_sha256(copy) not in (original, edited)


def test_latest_is_newest_released_not_newest_installed(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, root)
    shutil.copytree(root / "audit_report" / "2.1.0", root / "audit_report" / "10.0.0")
    registry = TemplateRegistry(root)
    assert registry.versions("audit_report") == ["1.0.0", "2.0.0", "2.0.1", "2.1.0", "10.0.0"]
    assert registry.resolve("audit_report").version == "2.1.0"
    unreleased = registry.resolve("audit_report", "10.0.0")
    assert not unreleased.released


def test_unknown_template_and_version_are_precise() -> None:
    registry = TemplateRegistry()
    with pytest.raises(
        TemplateNotFoundError, match=r"no version '9\.9\.9'.*1\.0\.0, 2\.0\.0, 2\.0\.1, 2\.1\.0"
    ):
        registry.resolve("audit_report", "9.9.9")
    with pytest.raises(TemplateNotFoundError, match="no released version"):
        registry.resolve("nope")


def test_compiled_once_and_cached() -> None:
    registry = TemplateRegistry()
    template = registry.resolve("summary", "1.0.0")
    assert registry.compile(template) is registry.compile(template)
    assert registry.resolve("summary", "1.0.0") is template


def test_broken_template_is_a_render_error(tmp_path: Path) -> None:
    version = tmp_path / "broken" / "1.0.0"
    version.mkdir(parents=True)
    (version / "report.html.j2").write_text("{% for x in %}")
    registry = TemplateRegistry(tmp_path)
    with pytest.raises(TemplateRenderError, match="does not compile"):
        registry.render(registry.resolve("broken", "1.0.0"), {})


def test_missing_field_fails_loudly(tmp_path: Path) -> None:
    version = tmp_path / "strict" / "1.0.0"
    version.mkdir(parents=True)
    (version / "report.html.j2").write_text("{{ business.nickname }}")
    registry = TemplateRegistry(tmp_path)
    with pytest.raises(TemplateRenderError, match="nickname"):
        registry.render(registry.resolve("strict", "1.0.0"), {"business": {}})


def test_sandbox_blocks_attribute_escapes(tmp_path: Path) -> None:
    version = tmp_path / "evil" / "1.0.0"
    version.mkdir(parents=True)
    (version / "report.html.j2").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    registry = TemplateRegistry(tmp_path)
    with pytest.raises(TemplateRenderError, match=r"SecurityError|unsafe"):
        registry.render(registry.resolve("evil", "1.0.0"), {})


@pytest.mark.parametrize("text", ["1", "1.2.3", "10.0.1"])
def test_parse_version_accepts_dotted_numbers(text: str) -> None:
    assert ".".join(map(str, parse_version(text))) == text


@pytest.mark.parametrize("text", ["", "1.x", "v1", "1..2"])
def test_parse_version_rejects_others(text: str) -> None:
    with pytest.raises(ValueError):
        parse_version(text)


@pytest.mark.parametrize("name", ["audit_report", "summary"])
def test_latest_versions_label_categories_properly(name: str) -> None:
    """ "SEO" and "Best Practices", in every place a category is shown (scores and findings)."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        business_ids = seed_demo(session)
        session.commit()
        contexts = [load_inputs(session, b).decode() for b in business_ids]
    engine.dispose()
    registry = TemplateRegistry()
    template = registry.resolve(name)
    assert template.version == {"audit_report": "2.1.0", "summary": "1.1.0"}[name]
    html = "".join(
        registry.render_report(template, context, generation_id="g", inputs_sha256="0" * 64)
        for context in contexts
    )
    assert ">SEO<" in html and ">Best Practices<" in html
    assert "Seo" not in html and ">seo<" not in html and "best practices" not in html
