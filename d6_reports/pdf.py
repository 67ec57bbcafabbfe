"""HTML -> PDF with WeasyPrint, locked down to the template's own assets.

Two properties matter for lineage: the converter can only read files that belong to the template
version being rendered (so data can never make it read ``/etc/passwd`` or call the network, and
the template content hash really covers everything that went into the PDF), and the output is
deterministic (dates come from the inputs through ``<meta name="dcterms.created">``, never from
the clock), so a PDF can be re-produced byte for byte from its lineage row.
"""

from __future__ import annotations

import hashlib
import mimetypes
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import weasyprint
from weasyprint.text.fonts import FontConfiguration
from weasyprint.urls import FatalURLFetchingError, URLFetcher, URLFetcherResponse

from d6_reports.errors import PDFConversionError


@dataclass(frozen=True, slots=True)
class PDFOutput:
    data: bytes
    pages: int
    sha256: str
    refused_urls: tuple[str, ...] = ()


class TemplateAssetFetcher(URLFetcher):  # type: ignore[misc]
    """Serves ``file:`` URLs inside one directory and ``data:`` URLs; refuses everything else.

    A refused URL is recorded (it becomes a warning on the result) and WeasyPrint renders
    without it. A missing asset *inside* the template directory is the template's own bug and
    stops the conversion.
    """

    def __init__(self, asset_root: Path) -> None:
        super().__init__(allowed_protocols={"file", "data"}, fail_on_errors=False)
        self._root = asset_root.resolve()
        self.refused: list[str] = []

    def fetch(self, url: str, headers: dict[str, str] | None = None) -> URLFetcherResponse:
        if url.startswith("data:"):
            return super().fetch(url, headers)
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            self._refuse(url)
        path = Path(unquote(parts.path)).resolve()
        if not path.is_relative_to(self._root):
            self._refuse(url)
        if not path.is_file():
            raise FatalURLFetchingError(f"template asset missing: {path.relative_to(self._root)}")
        mime_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return URLFetcherResponse(url, path.read_bytes(), headers={"Content-Type": mime_type})

    def _refuse(self, url: str) -> None:
        self.refused.append(url)
        raise ValueError(f"refused URL outside the template: {url[:200]}")


@dataclass
class PDFConverter:
    """Converts rendered HTML to PDF, reusing one font configuration per thread.

    WeasyPrint's ``FontConfiguration`` is expensive to build and not documented as thread-safe,
    so each thread that converts keeps its own.
    """

    _local: threading.local = field(default_factory=threading.local, repr=False)

    def _font_config(self) -> FontConfiguration:
        config: FontConfiguration | None = getattr(self._local, "font_config", None)
        if config is None:
            config = self._local.font_config = FontConfiguration()
        return config

    def convert(self, html: str, *, asset_root: Path, **options: Any) -> PDFOutput:
        fetcher = TemplateAssetFetcher(asset_root)
        try:
            document = weasyprint.HTML(
                string=html, base_url=asset_root.resolve().as_uri() + "/", url_fetcher=fetcher
            ).render(font_config=self._font_config(), **options)
            data = document.write_pdf()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise PDFConversionError(f"WeasyPrint failed: {type(exc).__name__}: {exc}") from exc
        return PDFOutput(
            data=data,
            pages=len(document.pages),
            sha256=hashlib.sha256(data).hexdigest(),
            refused_urls=tuple(fetcher.refused),
        )
