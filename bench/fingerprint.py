"""The renderer fingerprint's cost on the report thread (issue 12: target < 0.1 ms per report).

What the fingerprint adds to a report, each part measured directly, many times, on the real
objects: the WeasyPrint finisher that fingerprints the embedded fonts (font file hashes cached
per face, so after a thread's first PDF it is a few dictionary lookups), recording the two
attributes on the real convert span, and the fold turning them into the row's ``renderer``.
Also the one-time cost: hashing the font files for a thread's first PDF.

Run: ``.venv/bin/python -m bench.fingerprint`` (also part of ``make bench``).
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import weasyprint
from opentelemetry.sdk.trace import TracerProvider

from d6_reports import telemetry as t
from d6_reports.pdf import PDFConverter, _Finisher, renderer_versions
from d6_reports.templates import TemplateRegistry
from otel_lineage.capture.fold import _renderer

RESULTS = Path(__file__).parent / "results"
_INPUTS = {
    "business": {"name": "Bench Ltd", "website": "https://bench.example"},
    "assessment": {
        "assessed_at": "2026-01-02T00:00:00",
        **dict.fromkeys(
            ("performance", "accessibility", "seo", "best_practices", "security", "mobile"), 70
        ),
    },
    "findings": [],
}


def _median_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 2)


def run(repeat: int = 2000) -> dict[str, Any]:
    registry = TemplateRegistry()
    template = registry.resolve("summary")
    html = registry.render_report(
        template, _INPUTS, generation_id=str(uuid.uuid4()), inputs_sha256="0" * 64
    )
    converter = PDFConverter()
    first = time.perf_counter()
    pdf = converter.convert(html, asset_root=template.directory)  # the thread's first PDF
    first_pdf_ms = (time.perf_counter() - first) * 1000
    document = weasyprint.HTML(string=html, base_url=template.directory.as_uri() + "/").render(
        font_config=converter._font_config()
    )
    finisher_s: list[float] = []

    def timed(doc: Any, out: Any) -> None:
        started = time.perf_counter()
        _Finisher({}, converter._local.font_hashes)(doc, out)
        finisher_s.append(time.perf_counter() - started)

    for _ in range(min(repeat, 200)):  # each write_pdf is a whole PDF: fewer of them
        document.write_pdf(finisher=timed)
    cold: list[float] = []
    for _ in range(20):
        started = time.perf_counter()
        _Finisher({}, {})(document, None)  # no cached hash: every font file hashed
        cold.append(time.perf_counter() - started)

    span = TracerProvider().get_tracer("bench").start_span("report.convert_pdf")
    fonts = tuple(f"{font.family} sha256:{font.sha256}" for font in pdf.fonts)
    facts = {t.RENDERER_VERSIONS: renderer_versions(), t.RENDERER_FONTS: fonts}
    attribute_s, fold_s = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        span.set_attributes(facts)
        attribute_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        _renderer(renderer_versions(), fonts, {t.OUTPUT_FONT_SUBSETTER: "harfbuzz"}.get)
        fold_s.append(time.perf_counter() - started)
    span.end()
    parts = {
        "finisher_us": _median_us(finisher_s),
        "span_attributes_us": _median_us(attribute_s),
        "fold_us": _median_us(fold_s),
    }
    return {
        "command": ".venv/bin/python -m bench.fingerprint",
        "fonts": len(pdf.fonts),
        **parts,
        "total_per_report_us": round(sum(parts.values()), 2),
        "first_pdf_of_a_thread": {
            "font_hashing_ms": round(statistics.median(cold) * 1000, 3),
            "whole_first_conversion_ms": round(first_pdf_ms, 1),
        },
    }


def markdown(result: dict[str, Any]) -> list[str]:
    first = result["first_pdf_of_a_thread"]
    return [
        "## Renderer fingerprint (report thread)",
        "",
        f"`{result['command']}`: medians, {result['fonts']} embedded fonts.",
        "",
        "| part | µs per report |",
        "|---|---|",
        f"| finisher (font fingerprints, cached) | {result['finisher_us']} |",
        f"| two span attributes | {result['span_attributes_us']} |",
        f"| fold into `renderer` | {result['fold_us']} |",
        f"| **total** | **{result['total_per_report_us']}** |",
        "",
        f"Once per converter thread: hashing the font files, {first['font_hashing_ms']} ms.",
    ]


def main() -> None:
    result = run()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fingerprint.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(markdown(result)))


if __name__ == "__main__":
    main()
