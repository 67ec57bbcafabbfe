"""The span names, attribute keys and markers the lineage plugin reads and writes.

The report service publishes these names in ``docs/semantic-conventions.md``; this module is
the plugin's single copy of them (it never imports the generator). A test keeps it equal to the
producer's list.
"""

from __future__ import annotations

from typing import Final

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
HTML_SHA256: Final = "report.html.sha256"
OUTPUT_SHA256: Final = "report.output.sha256"
OUTPUT_BYTES: Final = "report.output.bytes"
OUTPUT_PAGES: Final = "report.output.pages"
OUTPUT_URI: Final = "report.output.uri"
STATUS: Final = "report.status"
ERROR_TYPE: Final = "error.type"

#: Attributes that must be a full sha256: a shorter value means a span limit truncated it.
DIGEST_ATTRIBUTES: Final = (TEMPLATE_SHA256, INPUTS_SHA256, HTML_SHA256, OUTPUT_SHA256)

#: OpenTelemetry Context key under which the producer hands the canonical input snapshot to
#: in-process processors (never an attribute, so never exported).
INPUTS_SNAPSHOT_CONTEXT_KEY: Final = "report.inputs.snapshot"

#: W3C trace-state entry the sampler adds to report traces so that every descendant span, in
#: this process or downstream, is recorded whatever the export decision.
TRACE_STATE_KEY: Final = "lineage"
TRACE_STATE_VALUE: Final = "1"

SERVICE_NAME: Final = "service.name"
SERVICE_VERSION: Final = "service.version"
