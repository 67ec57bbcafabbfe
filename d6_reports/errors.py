"""Expected failures of a report generation.

Each maps to a precise ``error_type`` on the failed ``ReportGeneration`` row, on the span
(``error.type``) and on the lineage row; ``generate_report`` returns them in the result instead
of raising.
"""

from __future__ import annotations


class ReportError(Exception):
    """Base class of expected generation failures; ``error_type`` is the stable name."""

    error_type = "ReportError"


class BusinessNotFoundError(ReportError):
    error_type = "BusinessNotFound"


class AssessmentNotFoundError(ReportError):
    error_type = "AssessmentNotFound"


class TemplateNotFoundError(ReportError):
    error_type = "TemplateNotFound"


class TemplateRenderError(ReportError):
    error_type = "TemplateRenderError"


class InputsError(ReportError):
    """Inputs that cannot be snapshotted: not JSON-serialisable, or over the size limit."""

    error_type = "InputsError"


class PDFConversionError(ReportError):
    error_type = "PDFConversionError"


class StorageError(ReportError):
    error_type = "StorageError"
