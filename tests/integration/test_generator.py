from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import StatusCode
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from d6_reports import telemetry as t
from d6_reports.generator import GenerationOptions, ReportGenerator
from d6_reports.models import Business, Finding, ReportGeneration
from d6_reports.pdf import PDFConverter
from d6_reports.templates import TEMPLATES_DIR, TemplateRegistry


def _rows(sessions: sessionmaker[Session]) -> list[ReportGeneration]:
    with sessions() as session:
        return list(session.scalars(select(ReportGeneration)))


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


async def test_generates_pdf_file_and_completed_row(
    generator: ReportGenerator, sessions: sessionmaker[Session], business_ids: list[int]
) -> None:
    result = await generator.generate_report(business_ids[0])
    assert result.success, result.error_message
    assert result.pdf_path is not None
    data = result.pdf_path.read_bytes()
    assert data.startswith(b"%PDF-")
    assert hashlib.sha256(data).hexdigest() == result.pdf_sha256
    assert result.template_version == generator.registry.resolve("audit_report").version
    assert set(result.timings_ms) == {"load_inputs", "render_html", "convert_pdf", "store"}
    (row,) = _rows(sessions)
    assert row.id == result.generation_id
    assert row.status == "completed"
    assert (row.pdf_sha256, row.pdf_bytes, row.pdf_pages) == (
        result.pdf_sha256,
        len(data),
        result.pages,
    )
    assert row.template_sha256 == generator.registry.resolve("audit_report").sha256
    assert row.started_at is not None and row.completed_at is not None
    assert row.duration_ms is not None and row.duration_ms > 0


async def test_every_step_has_a_span_with_its_attributes(
    generator: ReportGenerator, span_exporter: InMemorySpanExporter, business_ids: list[int]
) -> None:
    result = await generator.generate_report(business_ids[1], GenerationOptions("audit_report"))
    spans = _by_name(span_exporter.get_finished_spans())
    assert set(spans) == {t.SPAN_GENERATE, *t.STEP_SPANS}
    root = spans[t.SPAN_GENERATE]
    assert root.parent is None
    assert root.context is not None
    assert result.trace_id == f"{root.context.trace_id:032x}"
    for name in t.STEP_SPANS:
        step = spans[name]
        assert step.parent is not None and step.parent.span_id == root.context.span_id
        assert step.context is not None and step.context.trace_id == root.context.trace_id
    template = generator.registry.resolve("audit_report")
    assert root.attributes is not None
    assert root.attributes[t.GENERATION_ID] == result.generation_id
    assert root.attributes[t.BUSINESS_ID] == business_ids[1]
    assert root.attributes[t.TEMPLATE_VERSION] == template.version
    assert root.attributes[t.TEMPLATE_SHA256] == template.sha256
    assert root.attributes[t.STATUS] == "completed"
    load = spans[t.SPAN_LOAD_INPUTS].attributes or {}
    assert load[t.INPUTS_TABLES] == ("business", "website_assessment", "finding")
    assert isinstance(load[t.INPUTS_BYTES], int) and load[t.INPUTS_BYTES] > 100
    assert len(str(load[t.INPUTS_SHA256])) == 64
    render = spans[t.SPAN_RENDER_HTML].attributes or {}
    assert len(str(render[t.HTML_SHA256])) == 64
    assert render[t.TEMPLATE_NAME] == "audit_report"
    pdf = spans[t.SPAN_CONVERT_PDF].attributes or {}
    assert pdf[t.OUTPUT_SHA256] == result.pdf_sha256
    assert pdf[t.OUTPUT_PAGES] == result.pages
    store = spans[t.SPAN_STORE].attributes or {}
    assert result.pdf_path is not None
    assert store[t.OUTPUT_URI] == result.pdf_path.resolve().as_uri()
    # No span attribute carries the input snapshot or any other payload.
    for span in spans.values():
        for value in (span.attributes or {}).values():
            assert not (isinstance(value, str) and len(value) > 200)


class _RecordingSampler(Sampler):
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, object]]] = []

    def should_sample(  # type: ignore[no-untyped-def]
        self, parent_context, trace_id, name, kind=None, attributes=None, links=None, **_
    ) -> SamplingResult:
        self.seen.append((name, dict(attributes or {})))
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "recording"


async def test_root_attributes_are_visible_to_the_sampler(
    sessions: sessionmaker[Session], tmp_path: Path, business_ids: list[int]
) -> None:
    sampler = _RecordingSampler()
    provider = TracerProvider(sampler=sampler)
    generator = ReportGenerator(sessions, tmp_path, tracer_provider=provider)
    await generator.generate_report(business_ids[0], GenerationOptions("summary", "1.0.0"))
    name, attributes = sampler.seen[0]
    assert name == t.SPAN_GENERATE
    assert attributes[t.BUSINESS_ID] == business_ids[0]
    assert attributes[t.TEMPLATE_NAME] == "summary"
    assert attributes[t.TEMPLATE_VERSION] == "1.0.0"
    assert t.GENERATION_ID in attributes


async def test_each_report_is_its_own_trace_linked_to_the_caller(
    generator: ReportGenerator,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    business_ids: list[int],
) -> None:
    with tracer_provider.get_tracer("test").start_as_current_span("batch") as batch:
        await generator.generate_many(business_ids[:2], concurrency=2)
    roots = [s for s in span_exporter.get_finished_spans() if s.name == t.SPAN_GENERATE]
    assert len(roots) == 2
    assert len({r.context.trace_id for r in roots if r.context}) == 2
    for root in roots:
        assert root.parent is None
        assert [link.context.span_id for link in root.links] == [batch.get_span_context().span_id]


async def test_unknown_business_leaves_a_failed_row(
    generator: ReportGenerator,
    sessions: sessionmaker[Session],
    span_exporter: InMemorySpanExporter,
    business_ids: list[int],
) -> None:
    result = await generator.generate_report(987654)
    assert not result.success
    assert result.error_type == "BusinessNotFound"
    assert result.error_message == "business 987654 does not exist"
    (row,) = _rows(sessions)
    assert (row.status, row.error_type, row.business_id) == ("failed", "BusinessNotFound", 987654)
    spans = _by_name(span_exporter.get_finished_spans())
    for name in (t.SPAN_GENERATE, t.SPAN_LOAD_INPUTS):
        assert spans[name].status.status_code is StatusCode.ERROR
        assert (spans[name].attributes or {})[t.ERROR_TYPE] == "BusinessNotFound"
    assert t.SPAN_RENDER_HTML not in spans


async def test_business_without_assessment_fails_precisely(
    generator: ReportGenerator, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session, session.begin():
        session.add(Business(id=77, name="Bare", website="https://bare.example"))
    result = await generator.generate_report(77)
    assert (result.error_type, result.error_message) == (
        "AssessmentNotFound",
        "business 77 has no website assessment",
    )


async def test_unknown_template_version_leaves_a_failed_row(
    generator: ReportGenerator, sessions: sessionmaker[Session], business_ids: list[int]
) -> None:
    result = await generator.generate_report(
        business_ids[0], GenerationOptions("audit_report", "9.0.0")
    )
    assert result.error_type == "TemplateNotFound"
    assert "9.0.0" in (result.error_message or "")
    (row,) = _rows(sessions)
    assert (row.status, row.template_version) == ("failed", "9.0.0")


def _registry_with(tmp_path: Path, name: str, files: dict[str, str]) -> TemplateRegistry:
    root = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, root)
    version = root / name / "1.0.0"
    version.mkdir(parents=True)
    for file, body in files.items():
        (version / file).write_text(body)
    return TemplateRegistry(root)


@pytest.mark.parametrize(
    ("files", "error_type", "message"),
    [
        ({"report.html.j2": "{% if %}"}, "TemplateRenderError", "does not compile"),
        ({"report.html.j2": "{{ 1 / 0 }}"}, "TemplateRenderError", "ZeroDivisionError"),
        (
            {"report.html.j2": '<link rel="stylesheet" href="gone.css"><p>x</p>'},
            "PDFConversionError",
            "template asset missing: gone.css",
        ),
    ],
)
async def test_broken_templates_and_weasyprint_failures_leave_failed_rows(
    sessions: sessionmaker[Session],
    tmp_path: Path,
    tracer_provider: TracerProvider,
    business_ids: list[int],
    files: dict[str, str],
    error_type: str,
    message: str,
) -> None:
    registry = _registry_with(tmp_path, "broken", files)
    generator = ReportGenerator(
        sessions, tmp_path / "out", registry=registry, tracer_provider=tracer_provider
    )
    result = await generator.generate_report(business_ids[0], GenerationOptions("broken", "1.0.0"))
    assert result.error_type == error_type
    assert message in (result.error_message or "")
    (row,) = _rows(sessions)
    assert (row.status, row.error_type) == ("failed", error_type)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.pdf"))


async def test_same_inputs_and_version_give_identical_pdfs(
    generator: ReportGenerator, business_ids: list[int]
) -> None:
    """Versions from before PDFs named their report: byte-identical across generations."""
    before = GenerationOptions("audit_report", "2.0.1")
    first = await generator.generate_report(business_ids[2], before)
    second = await generator.generate_report(business_ids[2], before)
    assert first.generation_id != second.generation_id
    assert first.pdf_sha256 == second.pdf_sha256
    assert first.pdf_path and second.pdf_path and first.pdf_path != second.pdf_path


async def test_a_pdf_that_names_its_report_is_identical_for_the_same_generation(
    generator: ReportGenerator, sessions: sessionmaker[Session], business_ids: list[int]
) -> None:
    """The current versions print the generation id: two generations differ by that only,
    and a re-render of one generation (what ``verify`` does) is byte-identical."""
    first = await generator.generate_report(business_ids[2])
    second = await generator.generate_report(business_ids[2])
    assert first.pdf_sha256 != second.pdf_sha256
    from d6_reports.inputs import load_inputs

    with sessions() as session:
        snapshot = load_inputs(session, business_ids[2])
    template = generator.registry.resolve("audit_report")
    html = generator.registry.render_report(
        template,
        snapshot.decode(),
        generation_id=first.generation_id,
        inputs_sha256=snapshot.sha256,
    )
    again = PDFConverter().convert(html, asset_root=template.directory)
    assert again.sha256 == first.pdf_sha256


async def test_hostile_strings_render_as_text(
    generator: ReportGenerator, sessions: sessionmaker[Session], business_ids: list[int]
) -> None:
    hostile = '<script>alert(1)</script><img src="file:///etc/passwd"> {{ 7*7 }} {% raw %} ‮ 🚀'
    long_text = "A" * 19_000  # just under the per-field cap
    with sessions() as session, session.begin():
        session.execute(update(Business).where(Business.id == business_ids[0]).values(name=hostile))
        session.execute(update(Finding).values(evidence=long_text))
    template = generator.registry.resolve("audit_report")
    result = await generator.generate_report(business_ids[0])
    assert result.success, result.error_message
    assert result.warnings == ()  # the injected <img> was text, never a fetch
    with sessions() as session:
        from d6_reports.inputs import load_inputs

        snapshot = load_inputs(session, business_ids[0])
    html = generator.registry.render_report(
        template,
        snapshot.decode(),
        generation_id=result.generation_id,
        inputs_sha256=snapshot.sha256,
    )
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "{{ 7*7 }}" in html and "49" not in html.split("<body>")[1].split("</h1>")[0]
    assert long_text not in html  # long evidence is shown as an excerpt


async def test_inputs_over_the_limit_fail_precisely(
    sessions: sessionmaker[Session], tmp_path: Path, business_ids: list[int]
) -> None:
    generator = ReportGenerator(sessions, tmp_path, max_snapshot_bytes=1000)
    result = await generator.generate_report(business_ids[3])
    assert result.error_type == "InputsError"
    assert "over the 1000-byte limit" in (result.error_message or "")


async def test_invalid_arguments_raise_and_write_nothing(
    generator: ReportGenerator, sessions: sessionmaker[Session]
) -> None:
    with pytest.raises(TypeError):
        await generator.generate_report("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await generator.generate_report(0)
    with pytest.raises(ValueError, match="invalid template version"):
        await generator.generate_report(1, GenerationOptions("audit_report", "../x"))
    assert _rows(sessions) == []


async def test_works_without_any_sdk(
    sessions: sessionmaker[Session], tmp_path: Path, business_ids: list[int]
) -> None:
    from opentelemetry.trace import NoOpTracerProvider

    generator = ReportGenerator(sessions, tmp_path, tracer_provider=NoOpTracerProvider())
    result = await generator.generate_report(business_ids[0])
    assert result.success and result.trace_id is None


async def test_concurrent_batch_leaves_one_row_per_call(
    generator: ReportGenerator, sessions: sessionmaker[Session], business_ids: list[int]
) -> None:
    ids = business_ids[:3] * 2 + [424242]
    results = await generator.generate_many(ids, GenerationOptions("summary"), concurrency=4)
    assert [r.business_id for r in results] == ids
    assert sum(r.success for r in results) == 6
    with sessions() as session:
        counts = dict(
            session.execute(
                select(ReportGeneration.status, func.count()).group_by(ReportGeneration.status)
            ).all()
        )
    assert counts == {"completed": 6, "failed": 1}


def test_sync_wrapper(generator: ReportGenerator, business_ids: list[int]) -> None:
    assert generator.generate_report_sync(business_ids[0], GenerationOptions("summary")).success
    with pytest.raises(ValueError):
        asyncio.run(generator.generate_many([1], concurrency=0))
