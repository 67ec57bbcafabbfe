"""Expected failures of a report generation.

Each maps to a precise ``error_type`` on the failed ``ReportGeneration`` row, on the span
(``error.type``) and on the lineage row; ``generate_report`` returns them in the result instead
of raising.
"""

from __future__ import annotations


class ReportError(Exception):
    """Base class of expected generation failures; ``error_type`` is the stable name.

    ``description`` is a fixed sentence per class: it is what leaves the process (span status,
    exception events), because the message itself may quote customer data.
    """

    error_type = "ReportError"
    description = "the report could not be generated"


class BusinessNotFoundError(ReportError):
    error_type = "BusinessNotFound"
    description = "the business does not exist"


class AssessmentNotFoundError(ReportError):
    error_type = "AssessmentNotFound"
    description = "the business has no website assessment"


class TemplateNotFoundError(ReportError):
    error_type = "TemplateNotFound"
    description = "the template or version does not exist"


class TemplateRenderError(ReportError):
    error_type = "TemplateRenderError"
    description = "the template could not be rendered with these inputs"


class InputsError(ReportError):
    """Inputs that cannot be snapshotted: not JSON-serialisable, or over the size limit."""

    error_type = "InputsError"
    description = "the inputs cannot be read or snapshotted"


class PDFConversionError(ReportError):
    error_type = "PDFConversionError"
    description = "the HTML could not be converted to PDF"


class StorageError(ReportError):
    error_type = "StorageError"
    description = "the PDF or its row could not be stored"


class GenerationTimeoutError(ReportError):
    """A step ran past its time limit (a pathological input, a stuck renderer)."""

    error_type = "timeout"
    description = "a generation step ran past its time limit"
