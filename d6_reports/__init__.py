"""d6_reports: PDF audit reports from SQL data, versioned Jinja2 templates and WeasyPrint.

The public API is the generator and its option/result types; everything the service does is
traced through the OpenTelemetry API (see ``d6_reports.telemetry``).
"""

from d6_reports.generator import GenerationOptions, GenerationResult, ReportGenerator

__all__ = ["GenerationOptions", "GenerationResult", "ReportGenerator"]
