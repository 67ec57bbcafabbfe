"""The lineage a PDF names about itself, for copies whose bytes no longer match.

``identify`` first matches a PDF by the sha256 of its bytes (an exact copy). A copy that was
re-saved, annotated, compressed or signed by another PDF program has other bytes, but reports
made by a template version that prints its lineage name their report generation id in three
places, read here in this order:

1. the document Info dictionary (``/D6ReportId``, with ``/D6Template`` and ``/D6InputsSha256``),
   which PDF programs carry over when they rewrite a file;
2. an XMP packet in the namespace ``urn:d6-reports:lineage:1``, which programs that rebuild the
   Info dictionary usually keep;
3. the "Report <id>" line printed in the footer of every page: what is left after "print to
   PDF" drops all metadata (and what a person reads off a paper copy: ``identify --id``).

What a file says is a claim, not a proof: only the sha256 proves an exact copy. The id is
checked for form (a UUID) and looked up; whatever else the file claims is shown beside what the
lineage row recorded, never trusted in its place. Parsing is bounded (file size, pages read) and
never raises: a file pypdf cannot read simply names no lineage.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import asdict, dataclass
from typing import Final

INFO_REPORT_ID: Final = "/D6ReportId"
INFO_TEMPLATE: Final = "/D6Template"
INFO_INPUTS_SHA256: Final = "/D6InputsSha256"
XMP_NAMESPACE: Final = "urn:d6-reports:lineage:1"
#: Larger files are hashed but not parsed (pypdf reads the whole file into memory).
MAX_PARSED_BYTES: Final = 64 << 20
#: Pages searched for the footer line (it is on every page: the first few are enough).
FOOTER_PAGES: Final = 3

#: Where a PDF named its lineage, in words.
SOURCES: Final = {"info": "document information", "xmp": "XMP metadata", "footer": "page footer"}

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_FOOTER = re.compile(rf"Report\s+({_UUID.pattern})")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class EmbeddedLineage:
    """What a PDF says about its own lineage, and where it said it."""

    report_id: str
    source: str  # a key of SOURCES
    template: str | None = None
    inputs_sha256: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {**asdict(self), "where": SOURCES[self.source]}


def embedded_lineage(data: bytes) -> EmbeddedLineage | None:
    """The lineage ``data`` names (Info, then XMP, then the page footer), or None."""
    if len(data) > MAX_PARSED_BYTES or not data.startswith(b"%PDF-"):
        return None
    import pypdf  # a second or two of import time: only for files that need it

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # hostile files make it chatty
    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
    except Exception:  # pypdf raises many kinds on damaged or hostile files
        return None
    for source in (_from_info, _from_xmp, _from_footer):
        try:  # a broken source (a malformed XMP packet) must not hide the next one
            found = source(reader)
        except Exception:
            continue
        if found is not None:
            return found
    return None


def _from_info(reader: object) -> EmbeddedLineage | None:
    info = getattr(reader, "metadata", None)
    if not info:
        return None
    report_id = _uuid(info.get(INFO_REPORT_ID))
    if report_id is None:
        return None
    return EmbeddedLineage(
        report_id,
        "info",
        template=_text(info.get(INFO_TEMPLATE)),
        inputs_sha256=_sha256(info.get(INFO_INPUTS_SHA256)),
    )


def _from_xmp(reader: object) -> EmbeddedLineage | None:
    xmp = getattr(reader, "xmp_metadata", None)
    if xmp is None:
        return None
    for description in xmp.rdf_root.getElementsByTagNameNS(
        "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "Description"
    ):
        report_id = _uuid(description.getAttributeNS(XMP_NAMESPACE, "ReportId"))
        if report_id is not None:
            return EmbeddedLineage(
                report_id,
                "xmp",
                template=_text(description.getAttributeNS(XMP_NAMESPACE, "Template")),
                inputs_sha256=_sha256(description.getAttributeNS(XMP_NAMESPACE, "InputsSha256")),
            )
    return None


def _from_footer(reader: object) -> EmbeddedLineage | None:
    for page in list(getattr(reader, "pages", []))[:FOOTER_PAGES]:
        found = _FOOTER.search(page.extract_text() or "")
        if found:
            return EmbeddedLineage(found.group(1), "footer")
    return None


def _text(value: object) -> str | None:
    return str(value)[:200] if value else None


def _uuid(value: object) -> str | None:
    text = str(value).strip().lower() if value else ""
    return text if _UUID.fullmatch(text) else None


def _sha256(value: object) -> str | None:
    text = str(value).strip().lower() if value else ""
    return text if _SHA256.fullmatch(text) else None
