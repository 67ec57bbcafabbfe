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
STATUS: Final = "report.status"
ERROR_TYPE: Final = "error.type"

#: Key of the OpenTelemetry *Context* value carrying the canonical input snapshot bytes.
#: Context values stay inside the process (propagators only serialise trace context and
#: baggage), so the snapshot can reach an in-process span processor without ever being a span
#: attribute that an exporter would ship. It is set on the context the render span starts in.
INPUTS_SNAPSHOT_CONTEXT_KEY: Final = "report.inputs.snapshot"
