"""A fresh interpreter for the PDF determinism tests, optionally as on a machine without
libharfbuzz-subset0. Run as ``python -m tests.pdf_process render <asset dir> <subsetter|auto>``
(HTML on stdin) or ``python -m tests.pdf_process verify`` (a lineage row as JSON on stdin, bytes
as ``"hex:..."``); add ``--without-harfbuzz`` to make the library impossible to load, which is
exactly what WeasyPrint's loader meets when it is not installed. Prints one JSON object.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import cffi  # type: ignore[import-untyped]


def hide_harfbuzz_subset() -> None:
    """Make every attempt to open libharfbuzz-subset fail, as when it is not installed."""
    dlopen = cffi.FFI.dlopen

    def refuse_subset(ffi: cffi.FFI, name: Any, *args: Any, **kwargs: Any) -> Any:
        if "harfbuzz-subset" in str(name):
            raise OSError(f"cannot load library {name!r}")
        return dlopen(ffi, name, *args, **kwargs)

    cffi.FFI.dlopen = refuse_subset


def render(asset_root: Path, subsetter: str) -> dict[str, Any]:
    from d6_reports.errors import PDFConversionError
    from d6_reports.pdf import PDFConverter

    html = sys.stdin.read()
    converter = PDFConverter()
    choice: Any = None if subsetter == "auto" else subsetter
    first = converter.convert(html, asset_root=asset_root, font_subsetter=choice)
    again = converter.convert(html, asset_root=asset_root, font_subsetter=choice)
    try:
        converter.convert(html, asset_root=asset_root, font_subsetter="harfbuzz")
        refused = None
    except PDFConversionError as exc:
        refused = str(exc)
    return {
        "pdf": first.data.hex(),
        "again": again.sha256,
        "subsetter": first.font_subsetter,
        "harfbuzz_refused": refused,
    }


def verify() -> dict[str, Any]:
    from otel_lineage.reading.verify import verify as verify_row

    row = {
        key: bytes.fromhex(value[4:]) if isinstance(value, str) and value[:4] == "hex:" else value
        for key, value in json.load(sys.stdin).items()
    }
    result = verify_row(row)
    return {
        "ok": result.ok,
        "verdict": result.verdict,
        "recorded": result.recorded_font_subsetter,
        "replayed": result.replay_font_subsetter,
        "checks": {check.what: check.ok for check in result.checks},
    }


def main(argv: list[str]) -> None:
    if "--without-harfbuzz" in argv:
        argv.remove("--without-harfbuzz")
        hide_harfbuzz_subset()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv[0] == "render":
        print(json.dumps(render(Path(argv[1]), argv[2])))
    else:
        print(json.dumps(verify()))


if __name__ == "__main__":
    main(sys.argv[1:])
