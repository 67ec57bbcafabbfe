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
    #: A later attempt of the same request may succeed (infrastructure, not the report).
    retryable = False


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


class DatabaseUnavailableError(ReportError):
    """The report database could not be reached (refused, dropped, timed out).

    Unlike every other error here it says nothing about the report itself: the same request
    may succeed once the database is back, so a task queue retries it (``retryable``).
    """

    error_type = "database_unavailable"
    description = "the report database could not be reached"
    retryable = True


class GenerationNotFoundError(ReportError):
    """A queued generation id that names no pending row of this business and template."""

    error_type = "GenerationNotFound"
    description = "the queued report generation does not exist or does not match the request"


class SupersededError(ReportError):
    """Another attempt claimed the generation while this one ran (a redelivered task)."""

    error_type = "superseded"
    description = "a later attempt of the same report generation took it over"


#: Error types written by others than the generator (``otel-lineage recover``).
_RECORDED_BY_RECOVERY = {"abandoned": "the process died before the report ended"}


def describe(error_type: str) -> str:
    """``"<error_type>: <fixed sentence>"`` for an error type stored on a row.

    What may be shown of a stored failure anywhere: the stored message may quote customer data.
    """
    known = {cls.error_type: cls for cls in _subclasses(ReportError)}
    cls = known.get(error_type)
    if error_type in _RECORDED_BY_RECOVERY:
        return f"{error_type}: {_RECORDED_BY_RECOVERY[error_type]}"
    if cls is None:
        return f"{error_type}: unexpected error (details in the ReportGeneration row)"
    return f"{error_type}: {cls.description}"


def _subclasses(cls: type[ReportError]) -> list[type[ReportError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _subclasses(sub)
    return found


class AttemptsExhaustedError(ReportError):
    """A queued generation was attempted ``MAX_ATTEMPTS`` times without finishing (each
    attempt's worker died: a report that crashes its process, a poison message)."""

    error_type = "attempts_exhausted"
    description = "the queued report was attempted too many times without finishing"
