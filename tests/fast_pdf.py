"""A fast stand-in for WeasyPrint, for the tests that need thousands of reports.

Only the tests that measure the lineage pipeline at volume (memory over 10,000 reports, many
workers) use it; every other test renders real PDFs. It writes a real, minimal PDF with pydyf
(WeasyPrint's own PDF writer) whose content depends on the HTML, so digests stay meaningful.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pydyf

from d6_reports.pdf import PDFConverter, PDFOutput


class FastPDFConverter(PDFConverter):
    def convert(self, html: str, *, asset_root: Path, **options: Any) -> PDFOutput:
        document = pydyf.PDF()
        document.info["Title"] = pydyf.String(hashlib.sha256(html.encode()).hexdigest())
        page = pydyf.Dictionary(
            {
                "Type": "/Page",
                "Parent": document.pages.reference,
                "MediaBox": pydyf.Array([0, 0, 595, 842]),
            }
        )
        document.add_object(page)
        document.pages["Kids"].extend([page.number, 0, "R"])
        document.pages["Count"] += 1
        buffer = io.BytesIO()
        document.write(buffer)
        data = buffer.getvalue()
        return PDFOutput(data=data, pages=1, sha256=hashlib.sha256(data).hexdigest())
