"""A PDF names its lineage: metadata and footer, replay byte for byte, ``identify`` on copies.

Real WeasyPrint PDFs from the real generator, on SQLite and PostgreSQL; the copies are written
back by another PDF library (pypdf), as a customer's PDF program would.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pypdf
import pytest
from pypdf.annotations import FreeText
from pypdf.generic import NameObject, TextStringObject
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from d6_reports.generator import GenerationOptions, GenerationResult
from d6_reports.pdf import LINEAGE_INFO_KEYS, XMP_NAMESPACE, PDFConverter
from d6_reports.templates import TemplateRegistry
from otel_lineage.cli import app
from otel_lineage.reading import identify as reading
from otel_lineage.reading.query import get_row
from otel_lineage.reading.verify import verify
from tests.lineage_support import lineage_pipeline, make_generator

runner = CliRunner()


@dataclass
class Made:
    summary: GenerationResult
    audit: GenerationResult
    old: GenerationResult  # a version from before PDFs named their lineage
    engine: Engine


@pytest.fixture
def made(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Made]:
    monkeypatch.setenv("D6_DATABASE_URL", db_url)
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    with lineage_pipeline(db_url, engine) as (lineage, _):
        generator = make_generator(sessions, lineage, tmp_path / "pdfs")
        summary = generator.generate_report_sync(business_ids[0], GenerationOptions("summary"))
        audit = generator.generate_report_sync(business_ids[1], GenerationOptions("audit_report"))
        old = generator.generate_report_sync(
            business_ids[2], GenerationOptions("audit_report", "2.0.1")
        )
        generator.close()
        assert lineage.flush(30)
    assert summary.success and audit.success and old.success
    yield Made(summary, audit, old, engine)


def _pdf(result: GenerationResult) -> bytes:
    assert result.pdf_path is not None
    return result.pdf_path.read_bytes()


def _identify(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["identify", *args])
    return result.exit_code, result.output


def test_the_pdf_names_its_report_in_metadata_and_on_every_page(made: Made) -> None:
    for result in (made.summary, made.audit):
        row = get_row(made.engine, result.generation_id)
        reader = pypdf.PdfReader(io.BytesIO(_pdf(result)))
        template = f"{result.template_name} {result.template_version}"
        assert reader.metadata is not None
        assert {k: reader.metadata.get(k) for k in ("/D6ReportId", "/D6Template")} == {
            "/D6ReportId": result.generation_id,
            "/D6Template": template,
        }
        assert reader.metadata["/D6InputsSha256"] == row["inputs_sha256"]
        assert reader.xmp_metadata is not None
        (description,) = reader.xmp_metadata.rdf_root.getElementsByTagNameNS(
            "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "Description"
        )
        assert description.getAttributeNS(XMP_NAMESPACE, "ReportId") == result.generation_id
        assert description.getAttributeNS(XMP_NAMESPACE, "Template") == template
        footers = [f"Report {result.generation_id}" in p.extract_text() for p in reader.pages]
        assert len(footers) == result.pages and all(footers)
    assert made.audit.pages is not None and made.audit.pages > 1  # the cover has it too


def test_a_version_from_before_keeps_its_bytes_and_names_nothing(made: Made) -> None:
    reader = pypdf.PdfReader(io.BytesIO(_pdf(made.old)))
    assert reader.metadata is not None and "/D6ReportId" not in reader.metadata
    assert reader.xmp_metadata is None
    assert reading.embedded_lineage(_pdf(made.old)) is None
    assert verify(get_row(made.engine, made.old.generation_id)).ok


def test_replay_is_byte_for_byte_with_the_recorded_id(made: Made) -> None:
    for result in (made.summary, made.audit):
        checked = verify(get_row(made.engine, result.generation_id))
        assert checked.ok, checked.as_dict()
    # Two renders of the same generation are identical; another id makes another PDF.
    registry = TemplateRegistry()
    template = registry.resolve("summary")
    row = get_row(made.engine, made.summary.generation_id)
    from otel_lineage.reading.verify import stored_snapshot

    inputs = orjson.loads(stored_snapshot(row))

    def render(generation_id: str) -> str:
        html = registry.render_report(
            template, inputs, generation_id=generation_id, inputs_sha256=row["inputs_sha256"]
        )
        return PDFConverter().convert(html, asset_root=template.directory).sha256

    assert render(made.summary.generation_id) == render(made.summary.generation_id)
    assert render(made.summary.generation_id) == made.summary.pdf_sha256
    assert render(str(uuid.uuid4())) != made.summary.pdf_sha256


def _resaved(data: bytes, path: Path, *, keep_metadata: bool) -> Path:
    """``data`` written back by pypdf: annotated (keeping Info and XMP), or rebuilt page by
    page with nothing but the pages (as "print to PDF" leaves it)."""
    reader = pypdf.PdfReader(io.BytesIO(data))
    if keep_metadata:
        writer = pypdf.PdfWriter(clone_from=reader)
        note = FreeText(text="checked by support", rect=(50, 50, 200, 80))
        writer.add_annotation(page_number=0, annotation=note)
    else:
        writer = pypdf.PdfWriter()
        for page in reader.pages:
            writer.add_page(page)
        writer.add_metadata({"/Producer": "a PDF printer"})
    with open(path, "wb") as handle:
        writer.write(handle)
    assert path.read_bytes() != data
    return path


def test_identify_an_exact_copy_a_modified_one_and_a_printed_one(
    made: Made, tmp_path: Path
) -> None:
    result = made.summary
    report_id = result.generation_id
    assert result.pdf_path is not None
    code, out = _identify(str(result.pdf_path))
    assert code == 0 and "produced by 1 report(s)" in out and report_id in out

    annotated = _resaved(_pdf(result), tmp_path / "annotated.pdf", keep_metadata=True)
    code, out = _identify(str(annotated))
    assert code == 0, out
    assert f"modified copy of report {report_id}: bytes differ from the original" in out
    found = orjson.loads(runner.invoke(app, ["identify", str(annotated), "--json"]).stdout)
    assert found["matches"] == []
    assert found["modified_copy_of"]["report_generation_id"] == report_id
    assert found["modified_copy_of"]["output_sha256"] == result.pdf_sha256
    assert found["embedded"]["source"] == "info"

    bare = _resaved(_pdf(made.audit), tmp_path / "printed.pdf", keep_metadata=False)
    assert reading.embedded_lineage(bare.read_bytes()) == reading.EmbeddedLineage(
        made.audit.generation_id, "footer"
    )
    code, out = _identify(str(bare))
    assert code == 0 and f"modified copy of report {made.audit.generation_id}" in out
    assert "page footer" in " ".join(out.split())

    code, out = _identify("--id", report_id[:8])
    assert code == 0 and f"report {report_id}" in out
    typed = orjson.loads(runner.invoke(app, ["identify", "--id", report_id, "--json"]).stdout)
    assert [m["report_generation_id"] for m in typed["matches"]] == [report_id]
    assert "inputs_snapshot" not in typed["matches"][0]


def test_identify_refuses_what_it_cannot_stand_behind(made: Made, tmp_path: Path) -> None:
    code, out = _identify("--id", str(uuid.uuid4()))
    assert code == 1 and "no lineage row" in out
    assert made.summary.pdf_path is not None
    code, out = _identify(str(made.summary.pdf_path), "--id", made.summary.generation_id)
    assert code == 2 and "not both" in out
    code, out = _identify()
    assert code == 2 and "give a PDF file or --id" in out
    # A PDF that names a report nobody made: said, not believed.
    stranger = uuid.uuid4()
    reader = pypdf.PdfReader(io.BytesIO(_pdf(made.summary)))
    writer = pypdf.PdfWriter(clone_from=reader)
    writer._info.get_object()[NameObject("/D6ReportId")] = TextStringObject(str(stranger))  # type: ignore[union-attr]
    forged = tmp_path / "forged.pdf"
    with open(forged, "wb") as handle:
        writer.write(handle)
    code, out = _identify(str(forged))
    assert code == 1 and f"names report {stranger}" in " ".join(out.split())
    # Damaged files name nothing and never raise.
    data = _pdf(made.summary)
    for damaged in (data[: len(data) // 3], b"%PDF-1.7\n" + b"\x00" * 4096, b"%PDF-" + data[5:]):
        assert reading.embedded_lineage(damaged) in (None, reading.embedded_lineage(data))


def test_the_reader_and_the_writer_use_the_same_names() -> None:
    assert {f"/{key}" for key in LINEAGE_INFO_KEYS.values()} == {
        reading.INFO_REPORT_ID,
        reading.INFO_TEMPLATE,
        reading.INFO_INPUTS_SHA256,
    }
    assert XMP_NAMESPACE == reading.XMP_NAMESPACE


def test_a_broken_xmp_packet_does_not_hide_the_footer(made: Made, tmp_path: Path) -> None:
    reader = pypdf.PdfReader(io.BytesIO(_pdf(made.summary)))
    writer = pypdf.PdfWriter()
    for page in reader.pages:
        writer.add_page(page)
    broken = pypdf.generic.StreamObject()
    broken.set_data(b"<x:xmpmeta broken")
    writer._root_object[NameObject("/Metadata")] = writer._add_object(broken)
    copy = io.BytesIO()
    writer.write(copy)
    found = reading.embedded_lineage(copy.getvalue())
    assert found == reading.EmbeddedLineage(made.summary.generation_id, "footer")


def test_a_file_naming_a_report_that_made_no_pdf_is_not_its_copy(
    made: Made, tmp_path: Path, sessions: sessionmaker[Session], db_url: str, engine: Engine
) -> None:
    with lineage_pipeline(db_url, engine) as (lineage, _):
        generator = make_generator(sessions, lineage, tmp_path / "pdfs")
        failed = generator.generate_report_sync(777777, GenerationOptions("summary"))
        generator.close()
        assert lineage.flush(30)
    assert not failed.success
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(_pdf(made.summary))))
    writer.add_metadata({"/D6ReportId": failed.generation_id})
    forged = tmp_path / "forged-failed.pdf"
    with open(forged, "wb") as handle:
        writer.write(handle)
    code, out = _identify(str(forged))
    assert code == 1 and "produced a PDF" in " ".join(out.split())
    assert "modified copy" not in out
    # Control characters in a file name are shown, not sent to the terminal.
    evil = tmp_path / "evil\x1b]0;pwned\x07.txt"
    evil.write_text("not a pdf")
    code, out = _identify(str(evil))
    assert code == 1 and "\x1b" not in out and "\\x1b]0;pwned" in out
