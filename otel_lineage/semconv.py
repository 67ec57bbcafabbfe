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
#: Which font subsetter made the PDF ("harfbuzz" or "fonttools"): their bytes differ.
OUTPUT_FONT_SUBSETTER: Final = "report.output.font_subsetter"
#: The renderer fingerprint: "<library> <version>" of WeasyPrint, pydyf, fontTools, Jinja2 and
#: Python, and "<family> sha256:<digest of the font file>" of each font the PDF embeds.
RENDERER_VERSIONS: Final = "report.renderer.versions"
RENDERER_FONTS: Final = "report.renderer.fonts"
STATUS: Final = "report.status"
#: Which attempt of its generation the report is (a queued task can run more than once).
ATTEMPT: Final = "report.attempt"
#: The task-queue task that ran the report (queued generations only).
TASK_ID: Final = "report.task.id"
ERROR_TYPE: Final = "error.type"
#: The error type of a report cut off from its database. Cut at its final commit, the report
#: may have completed all the same: the writer settles such rows against the report's own row.
ERROR_DATABASE_UNAVAILABLE: Final = "database_unavailable"
#: Carrier-only keys: never span attributes (the snapshot is a payload, the full error message
#: may contain customer data, the caller ids are also on the root's link).
INPUTS_SNAPSHOT: Final = "report.inputs.snapshot"
ERROR_MESSAGE: Final = "error.message"
CALLER_TRACE_ID: Final = "report.caller.trace_id"
CALLER_SPAN_ID: Final = "report.caller.span_id"

#: Attributes that must be a full sha256: a shorter value means a span limit truncated it.
DIGEST_ATTRIBUTES: Final = (TEMPLATE_SHA256, INPUTS_SHA256, HTML_SHA256, OUTPUT_SHA256)

#: OpenTelemetry Context key of the report carrier: a plain dict, keyed by the attribute names
#: above (plus the carrier-only keys), that the producer sets on the context the root span
#: starts in and keeps filling while the report runs. Context values are never serialised by
#: propagators or seen by exporters, and no span limit applies to them: the carrier is the
#: fold's authority for a report's identity, digests, snapshot and full error message.
REPORT_CONTEXT_KEY: Final = "report.context"

#: Carrier keys whose value the fold compares with the span attributes of the same name.
CARRIED_ATTRIBUTES: Final = (
    GENERATION_ID,
    BUSINESS_ID,
    TEMPLATE_NAME,
    TEMPLATE_VERSION,
    TEMPLATE_SHA256,
    INPUTS_SHA256,
    INPUTS_BYTES,
    HTML_SHA256,
    OUTPUT_SHA256,
    OUTPUT_BYTES,
    OUTPUT_PAGES,
    OUTPUT_URI,
    STATUS,
    ATTEMPT,
    ERROR_TYPE,
)

#: W3C trace-state entry the sampler adds to report traces so that every descendant span, in
#: this process or downstream, is recorded whatever the export decision.
TRACE_STATE_KEY: Final = "lineage"
TRACE_STATE_VALUE: Final = "1"

#: Root attribute the sampler sets: which spans of this report trace are recorded, ``report``
#: (the report's own ``report.*`` spans: an unsampled trace under the default policy) or
#: ``all`` (a sampled trace, or ``OTEL_LINEAGE_RECORD_SPANS=all``). Stored as the row's
#: ``span_recording``, so a short span tree is never mistaken for a lost one.
SPAN_RECORDING: Final = "lineage.span_recording"
SPAN_RECORDING_REPORT: Final = "report"
SPAN_RECORDING_ALL: Final = "all"
#: Name prefix of the report's own spans (the root and its steps).
REPORT_SPAN_PREFIX: Final = "report."

SERVICE_NAME: Final = "service.name"
SERVICE_VERSION: Final = "service.version"
