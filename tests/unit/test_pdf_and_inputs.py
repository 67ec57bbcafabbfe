from __future__ import annotations

from pathlib import Path

import pytest

from d6_reports.errors import InputsError, PDFConversionError
from d6_reports.inputs import make_snapshot
from d6_reports.pdf import PDFConverter, available_font_subsetter

HTML = """<html><head><meta name="dcterms.created" content="2026-01-02T03:04:05Z">
<link rel="stylesheet" href="style.css"></head><body><h1>Title</h1>{extra}</body></html>"""


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    root = tmp_path / "assets"
    root.mkdir()
    (root / "style.css").write_text("h1 { color: #123456; }")
    (tmp_path / "secret.css").write_text("h1 { color: red; }")
    return root


def test_same_html_gives_byte_identical_pdf(assets: Path) -> None:
    converter = PDFConverter()
    first = converter.convert(HTML.format(extra=""), asset_root=assets)
    second = PDFConverter().convert(HTML.format(extra=""), asset_root=assets)
    assert first.data == second.data
    assert first.data.startswith(b"%PDF-")
    assert first.pages == 1
    assert first.font_subsetter == available_font_subsetter()


@pytest.mark.parametrize(
    "reference",
    [
        '<img src="file:///etc/passwd">',
        '<link rel="stylesheet" href="../secret.css">',
        '<img src="http://127.0.0.1:9/x.png">',
        '<link rel="stylesheet" href="https://example.invalid/x.css">',
        "<style>@import url(file:///etc/hostname);</style>",
    ],
)
def test_fetcher_refuses_everything_outside_the_template(assets: Path, reference: str) -> None:
    out = PDFConverter().convert(HTML.format(extra=reference), asset_root=assets)
    assert len(out.refused_urls) == 1
    assert out.data.startswith(b"%PDF-")


def test_own_assets_are_served(assets: Path) -> None:
    out = PDFConverter().convert(HTML.format(extra=""), asset_root=assets)
    assert out.refused_urls == ()


def test_missing_own_asset_is_a_conversion_error(assets: Path) -> None:
    (assets / "style.css").unlink()
    with pytest.raises(PDFConversionError, match=r"template asset missing: style\.css"):
        PDFConverter().convert(HTML.format(extra=""), asset_root=assets)


def test_snapshot_is_canonical() -> None:
    a = make_snapshot({"b": 1, "a": {"y": 2, "x": [1, "é"]}})
    b = make_snapshot({"a": {"x": [1, "é"], "y": 2}, "b": 1})
    assert a.data == b.data == '{"a":{"x":[1,"é"],"y":2},"b":1}'.encode()
    assert a.sha256 == b.sha256


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_numbers_are_rejected(bad: float) -> None:
    with pytest.raises(InputsError, match=r"non-finite number at \$\.business\.rating"):
        make_snapshot({"business": {"rating": bad}})


def test_non_json_values_are_rejected() -> None:
    with pytest.raises(InputsError, match="not JSON-serialisable"):
        make_snapshot({"blob": object()})


def test_snapshot_size_limit() -> None:
    with pytest.raises(InputsError, match="over the 100-byte limit"):
        make_snapshot({"x": "y" * 200}, max_bytes=100)
