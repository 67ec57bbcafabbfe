"""Same HTML -> same PDF bytes, on both of WeasyPrint's font subsetting paths, in every run.

WeasyPrint subsets fonts with HarfBuzz when libharfbuzz-subset0 is installed and with fontTools
otherwise; fontTools used to stamp the wall clock into every embedded font, so PDFs differed from
one second to the next on machines without the library. The fontTools path is forced here, so
CI catches a regression even where the library is installed. Each render runs in its own
process, started in a later second than the one before.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fontTools.misc.timeTools import timestampSinceEpoch  # type: ignore[import-untyped]
from fontTools.ttLib import TTFont  # type: ignore[import-untyped]
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from d6_reports.errors import PDFConversionError
from d6_reports.inputs import load_inputs
from d6_reports.models import Base
from d6_reports.pdf import FONTTOOLS, HARFBUZZ, PDFConverter, available_font_subsetter
from d6_reports.seed import seed_demo
from d6_reports.templates import TemplateRegistry
from otel_lineage.reading.verify import verify
from otel_lineage.record import compress
from otel_lineage.semconv import OUTPUT_FONT_SUBSETTER as FONT_SUBSETTER_ATTRIBUTE

CREATED = "2026-01-02T03:04:05Z"
HTML = f"""<html><head><meta name="dcterms.created" content="{CREATED}">
<style>h1 {{ font-family: sans-serif }} code {{ font-family: monospace }}</style></head>
<body><h1>Audit SEO 2026</h1><p>Plain <b>bold</b> <i>italic</i> <code>mono()</code>
&eacute;&agrave;&szlig; &mdash; 0123456789</p></body></html>"""

ROOT = Path(__file__).resolve().parents[2]
HAS_HARFBUZZ = available_font_subsetter() == HARFBUZZ
needs_harfbuzz = pytest.mark.skipif(
    not HAS_HARFBUZZ, reason="libharfbuzz-subset0 (>= 4.1.0) is not installed on this machine"
)


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    root = tmp_path / "assets"
    root.mkdir()
    return root


def _in_new_process(args: list[str], stdin: str) -> dict[str, Any]:
    """Run ``tests.pdf_process`` in a new interpreter started in a later wall-clock second."""
    second = int(time.time())
    while int(time.time()) == second:
        time.sleep(0.05)
    done = subprocess.run(
        [sys.executable, "-W", "default", "-m", "tests.pdf_process", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    result["stderr"] = done.stderr
    return result


def _render_in_new_process(assets: Path, subsetter: str, *flags: str) -> dict[str, Any]:
    result = _in_new_process(["render", str(assets), subsetter, *flags], HTML)
    result["pdf"] = bytes.fromhex(result["pdf"])
    return result


def _embedded_fonts(pdf: bytes) -> Iterator[TTFont]:
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.DOTALL):
        try:
            data = zlib.decompress(match.group(1))
        except zlib.error:
            continue
        if data[:4] in (b"\x00\x01\x00\x00", b"true", b"OTTO"):
            yield TTFont(io.BytesIO(data))


def _font_times(pdf: bytes) -> list[int]:
    times = [font["head"].modified for font in _embedded_fonts(pdf)]
    assert len(times) >= 3, "the test document should embed several fonts"
    return times


def test_fonttools_path_is_byte_identical_across_processes(assets: Path) -> None:
    first = _render_in_new_process(assets, FONTTOOLS)
    second = _render_in_new_process(assets, FONTTOOLS)
    assert first["subsetter"] == second["subsetter"] == FONTTOOLS
    assert first["pdf"] == second["pdf"]
    document_time = timestampSinceEpoch(datetime.fromisoformat(CREATED).timestamp())
    assert set(_font_times(first["pdf"])) == {document_time}, "font time is not the document's"


@needs_harfbuzz
def test_harfbuzz_path_is_byte_identical_across_processes(assets: Path) -> None:
    first = _render_in_new_process(assets, HARFBUZZ)
    second = _render_in_new_process(assets, HARFBUZZ)
    assert first["subsetter"] == second["subsetter"] == HARFBUZZ
    assert first["pdf"] == second["pdf"]
    forced = PDFConverter().convert(HTML, asset_root=assets, font_subsetter=FONTTOOLS)
    assert forced.data != first["pdf"], "the fontTools path was not really taken"


def test_machine_without_harfbuzz_makes_the_forced_fonttools_bytes_and_says_so_once(
    assets: Path,
) -> None:
    without = _render_in_new_process(assets, "auto", "--without-harfbuzz")
    forced_here = PDFConverter().convert(HTML, asset_root=assets, font_subsetter=FONTTOOLS)
    assert without["subsetter"] == FONTTOOLS
    assert without["pdf"] == forced_here.data
    assert without["again"] == forced_here.sha256
    assert "libharfbuzz-subset0 (>= 4.1.0) is not installed" in without["harfbuzz_refused"]
    lines = without["stderr"].splitlines()
    (notice,) = [line for line in lines if "libharfbuzz-subset0" in line]
    assert notice.startswith("WARNING d6_reports.pdf: libharfbuzz-subset0 is not installed")
    assert re.search(r"about \d+x slower: \d+ ms instead of \d+ ms per one-page PDF", notice)
    assert lines == [notice], "WeasyPrint's per-font warnings (or others) leaked"


def test_threads_keep_their_own_subsetter_and_font_time(assets: Path) -> None:
    converter = PDFConverter()
    subsetters = [FONTTOOLS, HARFBUZZ] if HAS_HARFBUZZ else [FONTTOOLS]
    dates = ["2026-01-02T03:04:05Z", "2025-06-30"]
    jobs = [(s, d) for s in subsetters for d in dates] * 3

    def render(job: tuple[str, str]) -> bytes:
        subsetter, date = job
        html = HTML.replace(CREATED, date)
        return converter.convert(html, asset_root=assets, font_subsetter=subsetter).data  # type: ignore[arg-type]

    alone = {job: render(job) for job in set(jobs)}
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(render, jobs))
    assert together == [alone[job] for job in jobs]
    assert len(set(alone.values())) == len(alone)
    moment = datetime(2025, 6, 30, tzinfo=UTC).timestamp()
    assert set(_font_times(alone[(FONTTOOLS, "2025-06-30")])) == {timestampSinceEpoch(moment)}


def test_unknown_subsetter_is_refused(assets: Path) -> None:
    with pytest.raises(PDFConversionError, match="unknown font subsetter 'cairo'"):
        PDFConverter().convert(HTML, asset_root=assets, font_subsetter="cairo")  # type: ignore[arg-type]


# -- verify: replay with the subsetter that made the PDF, or say why it cannot --------------------


def _lineage_row(subsetter: str | None, output_sha256: str | None = None) -> dict[str, Any]:
    """A stored lineage row of a one-page demo report whose PDF ``subsetter`` made.

    ``subsetter`` None: a row from before the subsetter was recorded. ``output_sha256``: the
    digest of a PDF made on another machine (default: the one made here with ``subsetter``).
    """
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        (business_id,) = seed_demo(session, count=1)
        session.commit()
        snapshot = load_inputs(session, business_id)
    engine.dispose()
    registry = TemplateRegistry()
    template = registry.resolve("summary", "1.0.1")
    html = registry.render(template, snapshot.decode())
    if output_sha256 is None:
        made_with: Any = subsetter or available_font_subsetter()
        output_sha256 = (
            PDFConverter()
            .convert(html, asset_root=template.directory, font_subsetter=made_with)
            .sha256
        )
    convert_attributes = {"report.output.sha256": output_sha256}
    if subsetter is not None:
        convert_attributes[FONT_SUBSETTER_ATTRIBUTE] = subsetter
    tree = {
        "resource": {},
        "trace_state": "",
        "spans": [
            {"name": "report.generate", "attributes": {}},
            {"name": "report.convert_pdf", "attributes": convert_attributes},
        ],
    }
    return {
        "report_generation_id": "r-1",
        "inputs_snapshot": compress(snapshot.data),
        "inputs_codec": "zstd",
        "inputs_sha256": snapshot.sha256,
        "template_name": template.name,
        "template_version": template.version,
        "template_sha256": template.sha256,
        "html_sha256": hashlib.sha256(html.encode()).hexdigest(),
        "output_sha256": output_sha256,
        "span_tree": compress(orjson.dumps(tree)),
        "span_tree_codec": "zstd",
    }


def _as_json(row: dict[str, Any]) -> str:
    return json.dumps({k: f"hex:{v.hex()}" if isinstance(v, bytes) else v for k, v in row.items()})


def test_verify_replays_with_the_subsetter_that_made_the_pdf() -> None:
    result = verify(_lineage_row(FONTTOOLS))
    assert result.ok, result.checks
    assert (result.recorded_font_subsetter, result.replay_font_subsetter) == (FONTTOOLS, FONTTOOLS)
    assert result.verdict == "reproduced byte for byte"


def test_verify_of_a_harfbuzz_pdf_on_a_machine_without_it_says_why() -> None:
    made_elsewhere = None if HAS_HARFBUZZ else hashlib.sha256(b"a HarfBuzz PDF").hexdigest()
    row = _lineage_row(HARFBUZZ, made_elsewhere)
    if HAS_HARFBUZZ:
        here = verify(row)
        assert here.ok and here.replay_font_subsetter == HARFBUZZ
    without = _in_new_process(["verify", "--without-harfbuzz"], _as_json(row))
    assert not without["ok"]
    assert (without["recorded"], without["replayed"]) == (HARFBUZZ, FONTTOOLS)
    assert without["verdict"] == (
        "made with HarfBuzz subsetting; this machine subsets with fontTools: PDF bytes cannot "
        "match; template and HTML digests match"
    )
    assert without["checks"] == {
        "inputs snapshot sha256": True,
        "template sha256": True,
        "html sha256": True,
        "pdf sha256": False,
    }


def test_verify_of_a_row_without_a_recorded_subsetter_names_what_is_unknown() -> None:
    row = _lineage_row(None, hashlib.sha256(b"made before subsetters were recorded").hexdigest())
    result = verify(row)
    assert not result.ok and result.recorded_font_subsetter is None
    assert result.verdict == (
        "the row does not record which font subsetter made the PDF; this machine subsets with "
        f"{'HarfBuzz' if HAS_HARFBUZZ else 'fontTools'}: PDF bytes may not match; template and "
        "HTML digests match"
    )


@pytest.mark.parametrize(
    ("meta", "font_time"),
    [
        ('<meta name="dcterms.modified" content="2026">', datetime(2026, 1, 1, tzinfo=UTC)),
        ('<meta name="dcterms.created" content="2026-03">', datetime(2026, 3, 1, tzinfo=UTC)),
        (
            '<meta name="dcterms.created" content="2026-03-04T05:06+02:00">',
            datetime(2026, 3, 4, 3, 6, tzinfo=UTC),
        ),
        ("", datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_font_time_comes_from_the_document_date(
    assets: Path, meta: str, font_time: datetime
) -> None:
    html = HTML.replace(f'<meta name="dcterms.created" content="{CREATED}">', meta)
    pdf = PDFConverter().convert(html, asset_root=assets, font_subsetter=FONTTOOLS)
    assert set(_font_times(pdf.data)) == {timestampSinceEpoch(font_time.timestamp())}
