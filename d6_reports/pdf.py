"""HTML -> PDF with WeasyPrint, locked down to the template's own assets.

Two properties matter for lineage: the converter can only read files that belong to the template
version being rendered (so data can never make it read ``/etc/passwd`` or call the network, and
the template content hash really covers everything that went into the PDF), and the output is
deterministic, so a PDF can be re-produced byte for byte from its lineage row.

Determinism has one trap, the embedded fonts. WeasyPrint subsets them with HarfBuzz when
``libharfbuzz-subset0`` is installed and with fontTools otherwise, and fontTools stamps the
current time into every font it writes (``head.modified``). So every conversion here runs with
the font clock pinned to the document's own date (``<meta name="dcterms.modified">`` or
``dcterms.created``, which the templates take from the inputs) and with an explicit choice of
subsetter, recorded on the output: the two subsetters write different (each deterministic) font
bytes, so a replay must use the one the original used. Both settings are context variables read
by the two seams in ``_install_seams``, so each call (and thread) has its own, nothing depends on
the caller's environment (``SOURCE_DATE_EPOCH``), and code outside this converter keeps
WeasyPrint's and fontTools' own behaviour.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import mimetypes
import platform
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as distributions
from pathlib import Path
from typing import Any, Final, Literal, cast
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape as xml_escape

import pydyf  # type: ignore[import-untyped]
from fontTools.misc import timeTools  # type: ignore[import-untyped]
from fontTools.ttLib.tables import _h_e_a_d  # type: ignore[import-untyped]

with warnings.catch_warnings():
    # Without libharfbuzz-subset0 WeasyPrint warns at import; _announce_fonttools says it once.
    warnings.filterwarnings("ignore", message="HarfBuzz-Subset will be required")
    import weasyprint
    from weasyprint.pdf import fonts as weasyprint_fonts
    from weasyprint.text import ffi as weasyprint_ffi
from weasyprint.text.fonts import FontConfiguration, get_hb_object_data
from weasyprint.urls import FatalURLFetchingError, URLFetcher, URLFetcherResponse

from d6_reports.errors import PDFConversionError

logger = logging.getLogger(__name__)

FontSubsetter = Literal["harfbuzz", "fonttools"]
HARFBUZZ: Final = "harfbuzz"
FONTTOOLS: Final = "fonttools"

# Measured here (2 cores, WeasyPrint 70, HarfBuzz 6.0): whole conversion of the one-page demo
# report (summary 1.0.1, demo business 1), median of 20 per path in one process; the ratio was
# 6x to 8x over five runs.
FONTTOOLS_COST: Final = "about 7x slower: 250 ms instead of 35 ms per one-page PDF"

#: ``<meta name>`` of a template -> the PDF Info key it becomes (the same name, less ``D6``, is
#: the property in the XMP namespace below). ``otel-lineage identify`` reads them back from a
#: modified copy; docs/semantic-conventions.md lists them.
LINEAGE_INFO_KEYS: Final = {
    "d6.report-id": "D6ReportId",
    "d6.template": "D6Template",
    "d6.inputs-sha256": "D6InputsSha256",
}
XMP_NAMESPACE: Final = "urn:d6-reports:lineage:1"

# Font time for a document without a usable date: fixed, so still deterministic.
_UNDATED: Final = datetime(1970, 1, 1, tzinfo=UTC)

_subsetter: ContextVar[FontSubsetter | None] = ContextVar("d6_font_subsetter", default=None)
_font_time: ContextVar[int | None] = ContextVar("d6_font_time", default=None)


def available_font_subsetter() -> FontSubsetter:
    """The subsetter WeasyPrint would pick on this machine (HarfBuzz >= 4.1.0 with its subset
    library, the same test as ``weasyprint.pdf.fonts.Font.subset``)."""
    if weasyprint_ffi.harfbuzz_subset and weasyprint_ffi.harfbuzz.hb_version_atleast(4, 1, 0):
        return HARFBUZZ
    return FONTTOOLS


#: What decides a PDF's bytes besides its HTML and assets, as distributions to ask for versions.
RENDERER_DISTRIBUTIONS: Final = ("weasyprint", "pydyf", "fonttools", "jinja2")


@functools.cache
def renderer_versions() -> tuple[str, ...]:
    """``"<name> <version>"`` of each renderer library and of Python (fixed for the process)."""
    versions = [f"{name} {distributions.version(name)}" for name in RENDERER_DISTRIBUTIONS]
    return (*versions, f"python {platform.python_version()}")


@dataclass(frozen=True, slots=True)
class EmbeddedFont:
    """A font file a PDF embeds (a subset of it): its family and the sha256 of the whole file."""

    family: str
    sha256: str


@dataclass(frozen=True, slots=True)
class PDFOutput:
    data: bytes
    pages: int
    sha256: str
    font_subsetter: str = field(default_factory=available_font_subsetter)
    refused_urls: tuple[str, ...] = ()
    #: The renderer fingerprint: ``renderer_versions()`` and the fonts embedded, sorted. Empty
    #: for converters that do not say what rendered (a test converter).
    renderer: tuple[str, ...] = ()
    fonts: tuple[EmbeddedFont, ...] = ()


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
            self._local.font_hashes = {}  # of this configuration's faces (see _Finisher)
        return config

    def convert(
        self,
        html: str,
        *,
        asset_root: Path,
        font_subsetter: FontSubsetter | None = None,
        **options: Any,
    ) -> PDFOutput:
        """``font_subsetter`` None: this machine's (see ``available_font_subsetter``)."""
        subsetter = _choose(font_subsetter)
        fetcher = TemplateAssetFetcher(asset_root)
        try:
            document = weasyprint.HTML(
                string=html, base_url=asset_root.resolve().as_uri() + "/", url_fetcher=fetcher
            ).render(font_config=self._font_config(), **options)
            metadata = document.metadata
            finisher = _Finisher(lineage_metadata(metadata.custom), self._local.font_hashes)
            with _font_settings(subsetter, _document_time(metadata.modified or metadata.created)):
                data = document.write_pdf(finisher=finisher)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise PDFConversionError(f"WeasyPrint failed: {type(exc).__name__}: {exc}") from exc
        return PDFOutput(
            data=data,
            pages=len(document.pages),
            sha256=hashlib.sha256(data).hexdigest(),
            font_subsetter=subsetter,
            refused_urls=tuple(fetcher.refused),
            renderer=renderer_versions(),
            fonts=finisher.fonts,
        )


def lineage_metadata(custom: dict[str, str]) -> dict[str, str]:
    """The ``<meta name="d6.*">`` values of a document, by their PDF Info key."""
    return {key: custom[name] for name, key in LINEAGE_INFO_KEYS.items() if custom.get(name)}


class _Finisher:
    """WeasyPrint's ``finisher`` hook, run after the pages and before the trailer: notes the
    fonts the PDF embeds and, for templates that name their lineage, writes it in.

    A font is fingerprinted by the sha256 of its whole file (what a font upgrade changes), not
    of the subset in the PDF (which changes with the text). Hashing a 700 KB font costs about a
    millisecond, so hashes are kept per HarfBuzz face in ``font_hashes``: the caller keeps that
    dict beside the ``FontConfiguration`` that owns the faces, so a face cannot be freed (and
    its address reused) while its hash is remembered.
    """

    def __init__(self, lineage: dict[str, str], font_hashes: dict[int, str]) -> None:
        self._lineage = lineage
        self._font_hashes = font_hashes
        self.fonts: tuple[EmbeddedFont, ...] = ()

    def _file_sha256(self, font: Any) -> str:
        face = int(weasyprint_ffi.ffi.cast("uintptr_t", font.hb_face))
        known = self._font_hashes.get(face)
        if known is None:
            known = hashlib.sha256(get_hb_object_data(font.hb_face)).hexdigest()
            self._font_hashes[face] = known
        return known

    def __call__(self, document: Any, pdf: pydyf.PDF) -> None:
        embedded = {
            EmbeddedFont(font.family, self._file_sha256(font)) for font in document.fonts.values()
        }
        self.fonts = tuple(sorted(embedded, key=lambda f: (f.family, f.sha256)))
        if self._lineage:
            _name_lineage(self._lineage, pdf)


def _name_lineage(lineage: dict[str, str], pdf: pydyf.PDF) -> None:
    """Write the report's lineage identity into the Info dictionary and an XMP packet.

    WeasyPrint writes custom ``<meta>`` names only with ``custom_metadata`` (which would take
    every unknown name a template has) and XMP only for PDF/A, UA or X variants, so this runs in
    its ``finisher``. Nothing in it depends on the time or on chance: two conversions of the
    same HTML stay identical.
    """
    for key, value in lineage.items():
        pdf.info[key] = pydyf.String(value)
    properties = "".join(
        f' d6:{key.removeprefix("D6")}="{xml_escape(value, {chr(34): "&quot;"})}"'
        for key, value in lineage.items()
    )
    packet = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:d6="{XMP_NAMESPACE}"{properties}/>'
        "</rdf:RDF></x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    )
    stream = pydyf.Stream([packet.encode()], {"Type": "/Metadata", "Subtype": "/XML"})
    pdf.add_object(stream)
    pdf.catalog["Metadata"] = stream.reference


def _choose(requested: FontSubsetter | None) -> FontSubsetter:
    available = available_font_subsetter()
    if available == FONTTOOLS:
        _announce_fonttools()
    if requested is None:
        return available
    if requested not in (HARFBUZZ, FONTTOOLS):
        raise PDFConversionError(f"unknown font subsetter {requested!r} (harfbuzz, fonttools)")
    if requested == HARFBUZZ and available != HARFBUZZ:
        raise PDFConversionError(
            "HarfBuzz font subsetting requested, but libharfbuzz-subset0 (>= 4.1.0) is not "
            "installed on this machine"
        )
    return requested


_announce_lock = threading.Lock()
_announced = False


def _announce_fonttools() -> None:
    """One line per process instead of WeasyPrint's warning per font and conversion."""
    global _announced
    with _announce_lock:
        if _announced:
            return
        _announced = True
    logger.warning(
        "libharfbuzz-subset0 is not installed: PDF fonts are subset with fontTools, %s "
        "(PDFs stay deterministic, with different bytes than on a machine with the library; "
        "install it: apt-get install libharfbuzz-subset0)",
        FONTTOOLS_COST,
    )


def _document_time(w3c_date: str | None) -> int:
    """``dcterms`` date (W3C profile of ISO 8601, as WeasyPrint accepted it) -> font time."""
    moment = _UNDATED
    if w3c_date:
        text = w3c_date.strip()
        text += {4: "-01-01", 7: "-01"}.get(len(text), "")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            moment = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return cast(int, timeTools.timestampSinceEpoch(moment.timestamp()))


@contextmanager
def _font_settings(subsetter: FontSubsetter, font_time: int) -> Iterator[None]:
    subsetter_token = _subsetter.set(subsetter)
    time_token = _font_time.set(font_time)
    try:
        yield
    finally:
        _font_time.reset(time_token)
        _subsetter.reset(subsetter_token)


def _install_seams() -> None:
    """Route WeasyPrint's font subsetting and fontTools' font clock through the context.

    WeasyPrint (70) has no option to choose the subsetter: ``Font.subset`` tests the library and
    calls ``_harfbuzz_subset`` or ``_fonttools_subset``. Inside ``PDFConverter.convert`` the
    wrapper calls the chosen one directly (which also skips the per-font warning); elsewhere it
    is WeasyPrint's own method. fontTools' ``head`` table reads its clock through the module
    global ``timestampNow``; inside ``convert`` it reads the document's time instead.
    """
    font_class: Any = weasyprint_fonts.Font
    if not all(hasattr(font_class, name) for name in ("_harfbuzz_subset", "_fonttools_subset")):
        raise ImportError(
            f"WeasyPrint {weasyprint.__version__} no longer has Font._harfbuzz_subset/"
            "_fonttools_subset: d6_reports.pdf cannot choose the font subsetter, so PDFs would "
            "not be reproducible; pin the WeasyPrint version this module was written for (70)"
        )
    weasyprint_subset = font_class.subset
    clock = timeTools.timestampNow

    def subset(font: Any, to_unicode: Any, hinting: bool) -> None:
        chosen = _subsetter.get()
        if chosen is None:
            weasyprint_subset(font, to_unicode, hinting)
        elif to_unicode:
            if chosen == HARFBUZZ:
                font._harfbuzz_subset(to_unicode, hinting)
            else:
                font._fonttools_subset(to_unicode, hinting)

    def timestamp_now() -> int:
        pinned = _font_time.get()
        return clock() if pinned is None else pinned

    font_class.subset = subset
    _h_e_a_d.timestampNow = timestamp_now


_install_seams()
