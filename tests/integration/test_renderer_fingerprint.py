"""The renderer fingerprint: what rendered each PDF, and what ``verify`` says when it changed.

Real WeasyPrint reports through the real lineage pipeline, on SQLite and PostgreSQL. A renderer
upgrade is simulated by editing the recorded fingerprint (and, where the point is a PDF that no
longer matches, the recorded PDF digest): the replay itself is real.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from d6_reports.generator import GenerationOptions, GenerationResult
from d6_reports.pdf import available_font_subsetter
from otel_lineage.cli import app
from otel_lineage.delivery.schema import report_lineage
from otel_lineage.reading.query import get_row, step_stats
from otel_lineage.reading.verify import renderer_differences, verify
from tests.fast_pdf import FastPDFConverter
from tests.lineage_support import lineage_pipeline, make_generator

runner = CliRunner()


@dataclass
class Made:
    real: GenerationResult
    fast: GenerationResult  # a converter that does not say what rendered
    engine: Engine


@pytest.fixture
def made(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Made]:
    monkeypatch.setenv("D6_DATABASE_URL", db_url)
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    with lineage_pipeline(db_url, engine) as (lineage, _):
        generator = make_generator(sessions, lineage, tmp_path / "pdfs")
        real = generator.generate_report_sync(business_ids[0], GenerationOptions("summary"))
        generator.close()
        generator = make_generator(sessions, lineage, tmp_path / "pdfs")
        generator._converter = FastPDFConverter()
        fast = generator.generate_report_sync(business_ids[1], GenerationOptions("summary"))
        generator.close()
        assert lineage.flush(30)
    assert real.success and fast.success
    yield Made(real, fast, engine)


def _set_renderer(engine: Engine, report_id: str, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(report_lineage)
            .where(report_lineage.c.report_generation_id == report_id)
            .values(**values)
        )


def test_each_row_records_what_rendered_it(made: Made) -> None:
    renderer = get_row(made.engine, made.real.generation_id)["renderer"]
    for name in ("weasyprint", "pydyf", "fonttools", "jinja2"):
        assert renderer[name] == metadata.version(name)
    assert re.fullmatch(r"3\.\d+\.\d+\S*", renderer["python"])
    assert renderer["font_subsetter"] == available_font_subsetter()
    assert renderer["fonts"] and all(
        f["family"] == "DejaVu Sans" and re.fullmatch(r"[0-9a-f]{64}", f["sha256"])
        for f in renderer["fonts"]
    )
    # The fonts are fingerprinted by their whole file, the same for every report.
    assert len({f["sha256"] for f in renderer["fonts"]}) == len(renderer["fonts"])
    shown = runner.invoke(app, ["show", made.real.generation_id, "--json"])
    assert orjson.loads(shown.stdout)["renderer"] == renderer
    table = runner.invoke(app, ["show", made.fast.generation_id], terminal_width=200)
    assert re.search(r"renderer\s+.*not recorded", table.output)
    assert get_row(made.engine, made.fast.generation_id)["renderer"] is None


def test_verify_names_the_part_of_the_renderer_that_differs(made: Made) -> None:
    report_id = made.real.generation_id
    same = verify(get_row(made.engine, report_id))
    assert same.ok and same.renderer_differences == []
    recorded = get_row(made.engine, report_id)["renderer"]
    upgraded = {
        **recorded,
        "weasyprint": "69.2",
        "fonts": [{**recorded["fonts"][0], "sha256": "0" * 64}, *recorded["fonts"][1:]],
    }
    _set_renderer(made.engine, report_id, renderer=upgraded, output_sha256="f" * 64)
    result = verify(get_row(made.engine, report_id))
    assert not result.ok
    here = recorded["weasyprint"]
    assert f"weasyprint {here} here, 69.2 then" in result.renderer_differences
    assert any(d.startswith("font DejaVu Sans: file sha256") for d in result.renderer_differences)
    assert result.explanation is not None
    assert result.explanation.startswith("the renderer differs: weasyprint")
    assert "template and HTML digests match" in result.explanation
    shown = runner.invoke(app, ["verify", report_id])
    assert shown.exit_code == 1
    assert f"weasyprint {here} here, 69.2 then" in " ".join(shown.output.split())
    as_json = orjson.loads(runner.invoke(app, ["verify", report_id, "--json"]).stdout)
    assert as_json["renderer"]["recorded"]["weasyprint"] == "69.2"
    assert as_json["renderer"]["replayed"]["weasyprint"] == here


def test_a_row_without_a_fingerprint_still_verifies(made: Made) -> None:
    report_id = made.real.generation_id
    _set_renderer(made.engine, report_id, renderer=None)  # a row from before revision 0008
    result = verify(get_row(made.engine, report_id))
    assert result.ok and result.recorded_renderer is None and result.renderer_differences == []
    shown = runner.invoke(app, ["verify", report_id])
    assert shown.exit_code == 0 and "renderer not recorded" in shown.output


def test_stats_can_group_by_renderer(made: Made) -> None:
    groups = step_stats(made.engine, by_renderer=True)
    labels = {g["renderer"]: g["count"] for g in groups}
    assert labels == {f"weasyprint {metadata.version('weasyprint')}": 1, "not recorded": 1}
    assert "renderer" not in step_stats(made.engine)[0]
    table = runner.invoke(app, ["stats", "--by-renderer"])
    assert table.exit_code == 0 and "Reports per template version" in table.output
    shown = orjson.loads(runner.invoke(app, ["stats", "--by-renderer", "--json"]).stdout)
    assert sorted(g["renderer"] for g in shown) == sorted(labels)


def test_renderer_differences_cover_added_and_removed_fonts() -> None:
    then = {"weasyprint": "70.0", "fonts": [{"family": "A", "sha256": "1" * 64}]}
    here = {"weasyprint": "70.0", "fonts": [{"family": "B", "sha256": "2" * 64}]}
    assert renderer_differences(then, here) == [
        "font A (111111111111) was embedded then, not here",
        "font B (222222222222) is embedded here, not then",
    ]
    assert renderer_differences(None, here) == []
    assert renderer_differences(then, {**then}) == []


@pytest.mark.parametrize(
    "tampered",
    [[1, 2, 3], "a string", 42, {"fonts": None}, {"fonts": [1, {}]}, {"weasyprint": ["x"]}],
    ids=["list", "string", "number", "null-fonts", "bad-fonts", "list-version"],
)
def test_an_edited_fingerprint_never_breaks_the_readers(made: Made, tampered: object) -> None:
    report_id = made.real.generation_id
    _set_renderer(made.engine, report_id, renderer=tampered)
    for args in (["show", report_id], ["verify", report_id], ["verify", report_id, "--json"]):
        done = runner.invoke(app, args)
        assert done.exit_code in (0, 1) and "unexpected" not in done.output, (args, done.output)
    assert runner.invoke(app, ["stats", "--by-renderer", "--json"]).exit_code == 0
