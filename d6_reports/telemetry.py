"""Span names and attribute keys the report service emits (see docs/semantic-conventions.md).

These names are a published contract: the lineage plugin reads them (it keeps its own copy in
``otel_lineage.semconv``, and a test keeps the two equal), dashboards and Jaeger searches use
them. Only the OpenTelemetry *API* is used here; with no SDK configured every span is a no-op.
"""

from __future__ import annotations

from typing import Final

INSTRUMENTATION_NAME: Final = "d6_reports"

SPAN_GENERATE: Final = "report.generate"
SPAN_LOAD_INPUTS: Final = "report.load_inputs"
SPAN_RENDER_HTML: Final = "report.render_html"
SPAN_CONVERT_PDF: Final = "report.convert_pdf"
SPAN_STORE: Final = "report.store"
STEP_SPANS: Final = (SPAN_LOAD_INPUTS, SPAN_RENDER_HTML, SPAN_CONVERT_PDF, SPAN_STORE)

GENERATION_ID: Final = "report.generation_id"
BUSINESS_ID: Final = "report.business_id"
TEMPLATE_NAME: Final = "report.template.name"
TEMPLATE_VERSION: Final = "report.template.version"
TEMPLATE_SHA256: Final = "report.template.sha256"
INPUTS_SHA256: Final = "report.inputs.sha256"
INPUTS_BYTES: Final = "report.inputs.bytes"
INPUTS_TABLES: Final = "report.inputs.tables"
INPUTS_FINDINGS: Final = "report.inputs.findings"
HTML_SHA256: Final = "report.html.sha256"
HTML_BYTES: Final = "report.html.bytes"
OUTPUT_SHA256: Final = "report.output.sha256"
OUTPUT_BYTES: Final = "report.output.bytes"
OUTPUT_PAGES: Final = "report.output.pages"
OUTPUT_URI: Final = "report.output.uri"
OUTPUT_REFUSED_URLS: Final = "report.output.refused_urls"
OUTPUT_FONT_SUBSETTER: Final = "report.output.font_subsetter"
#: The renderer fingerprint: "<library> <version>" of WeasyPrint, pydyf, fontTools, Jinja2 and
#: Python, and "<family> sha256:<digest of the font file>" of each font the PDF embeds.
RENDERER_VERSIONS: Final = "report.renderer.versions"
RENDERER_FONTS: Final = "report.renderer.fonts"
STATUS: Final = "report.status"
#: Which attempt of its generation the report is (1, or more for a redelivered queued task).
ATTEMPT: Final = "report.attempt"
#: The task-queue task that ran the report (queued generations only).
TASK_ID: Final = "report.task.id"
ERROR_TYPE: Final = "error.type"
#: Carrier key of the full error message (may hold customer data: never an attribute).
ERROR_MESSAGE: Final = "error.message"
CALLER_TRACE_ID: Final = "report.caller.trace_id"
CALLER_SPAN_ID: Final = "report.caller.span_id"
REPORT_TRACE_ID: Final = "report.trace_id"

#: Event added to the span that requested a report (when it is recording): names the report's
#: generation id and trace id, so a trace viewer leads from a request to its report.
EVENT_REPORT_REQUESTED: Final = "report.requested"
#: Fixed, data-free description of an exception in span events (``exception.message``).
EXCEPTION_EVENT: Final = "exception"

#: Key of the OpenTelemetry *Context* value carrying the report's context: a plain mutable
#: dict, keyed by the attribute names above (plus ``INPUTS_SNAPSHOT`` and ``ERROR_MESSAGE``),
#: that the generator fills while the report runs. It is set on the context the root span
#: starts in, so an in-process span processor receives it in ``on_start``. Context values stay
#: inside the process (propagators only serialise trace context and baggage) and no span limit
#: applies to them: the report's identity, digests, input snapshot and full error message reach
#: a lineage processor whatever the attribute limits, and no exporter ever ships them.
REPORT_CONTEXT_KEY: Final = "report.context"
#: Carrier key of the canonical input snapshot bytes.
INPUTS_SNAPSHOT: Final = "report.inputs.snapshot"
