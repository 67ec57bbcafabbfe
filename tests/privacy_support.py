"""Helpers for the "personal data stays home" tests: marked inputs, broken inputs, receivers.

A *case* is one business whose data carries a unique marker in one input column, broken in one
way (or not at all) so that one step of the report fails. The tests then look for the marker in
everything that leaves the process, and in the lineage database where it must stay.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from d6_reports.errors import PDFConversionError
from d6_reports.models import Business, Finding, WebsiteAssessment
from d6_reports.pdf import PDFOutput
from d6_reports.templates import TEMPLATES_DIR
from tests.fast_pdf import FastPDFConverter

#: Every input column that holds free text (country is two characters: no room for a marker).
COLUMNS: tuple[tuple[str, str], ...] = (
    *(("business", c) for c in ("name", "website", "phone", "email", "address", "city")),
    ("business", "industry"),
    ("website_assessment", "url"),
    ("website_assessment", "extra"),
    *(
        ("finding", c)
        for c in ("title", "description", "evidence", "category", "severity", "impact", "effort")
    ),
)

#: Test templates: ``everything`` renders every input value (so a converter sees each marker);
#: ``lookup`` maps each marked value through a table that does not know it, which fails with
#: the value in the message, as a template keyed by a data value does.
_EVERYTHING = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>all</title></head><body>
{% for row in [business, assessment, assessment.extra or {}] + findings %}
<dl>{% for key, value in row | dictsort %}<dt>{{ key }}</dt><dd>{{ value }}</dd>{% endfor %}</dl>
{% endfor %}</body></html>
"""
_LOOKUP = """{% set labels = {} %}
{% for row in [business, assessment, assessment.extra or {}] + findings %}
{% for key, value in row | dictsort %}
{% if value is string and value.startswith("zqx") %}{{ labels[value] }}{% endif %}
{% endfor %}{% endfor %}
"""


def new_marker() -> str:
    """12 characters: fits every text column, even ``varchar(20)`` on PostgreSQL."""
    return f"zqx{uuid.uuid4().hex[:9]}"


def template_root(directory: Path) -> Path:
    """A template tree with the two test templates and the real ``audit_report`` 2.0.0."""
    for name, source in (("everything", _EVERYTHING), ("lookup", _LOOKUP)):
        version = directory / name / "1.0.0"
        version.mkdir(parents=True)
        (version / "report.html.j2").write_text(source)
    shutil.copytree(TEMPLATES_DIR / "audit_report" / "2.0.0", directory / "audit_report" / "2.0.0")
    return directory


class MarkerQuotingConverter(FastPDFConverter):
    """Fails like WeasyPrint on bad markup: the message quotes the HTML around the problem."""

    def convert(self, html: str, *, asset_root: Path, **options: Any) -> PDFOutput:
        at = max(html.find("zqx"), 0)
        cause = ValueError(f"cannot lay out element near {html[max(at - 20, 0) : at + 40]!r}")
        raise PDFConversionError(f"WeasyPrint failed: ValueError: {cause}") from cause


@dataclass(frozen=True)
class Case:
    """One report: ``marker`` in ``table.column``, broken by ``failure``."""

    table: str
    column: str
    failure: str
    marker: str
    business_id: int = 0
    finding_id: int = 0
    assessment_id: int = 0

    @property
    def label(self) -> str:
        return f"{self.failure}:{self.table}.{self.column}"


def insert_case(sessions: sessionmaker[Session], case: Case) -> Case:
    """The business, assessment and two findings of ``case``, with the marker in place."""

    def value(table: str, column: str, normal: str) -> str:
        return case.marker if (table, column) == (case.table, case.column) else normal

    business = Business(
        name=value("business", "name", "Harbour Bakery"),
        website=value("business", "website", "https://bakery.example"),
        phone=value("business", "phone", "+1 555 010 0000"),
        email=value("business", "email", "hello@bakery.example"),
        address=value("business", "address", "1 Main Street"),
        city=value("business", "city", "Springfield"),
        country="US",
        industry=value("business", "industry", "food"),
        rating=4.2,
        review_count=12,
        created_at=datetime(2026, 10, 1, tzinfo=UTC),
    )
    extra: dict[str, object] = {"pages_crawled": 7, "tool": "d6-audit 3.2"}
    if (case.table, case.column) == ("website_assessment", "extra"):
        extra["note"] = case.marker
    assessment = WebsiteAssessment(
        assessed_at=datetime(2026, 11, 2, 9, 30, tzinfo=UTC),
        url=value("website_assessment", "url", "https://bakery.example/"),
        performance=70,
        accessibility=80,
        seo=90,
        best_practices=60,
        security=50,
        mobile=40,
        lcp_ms=2000,
        extra=extra,
    )
    marked = Finding(
        category=value("finding", "category", "seo"),
        severity=value("finding", "severity", "high"),
        title=value("finding", "title", "Missing meta description"),
        description=value("finding", "description", "Search engines show a random snippet."),
        impact=value("finding", "impact", "medium"),
        effort=value("finding", "effort", "low"),
        evidence=value("finding", "evidence", "<meta name=description> absent"),
    )
    plain = Finding(
        category="performance",
        severity="low",
        title="Large images",
        description="Images are not compressed.",
        impact="low",
        effort="low",
        evidence=None,
    )
    assessment.findings.extend([marked, plain])
    business.assessments.append(assessment)
    with sessions() as session, session.begin():
        session.add(business)
        session.flush()
        return Case(
            case.table,
            case.column,
            case.failure,
            case.marker,
            business.id,
            marked.id,
            assessment.id,
        )


def break_inputs(engine: Engine, case: Case) -> None:
    """Write what the ORM would refuse, with raw SQL, as a bad import would."""
    sqlite = engine.dialect.name == "sqlite"
    where = {"business": "id = :b", "website_assessment": "id = :a", "finding": "id = :f"}
    params: dict[str, object] = {"b": case.business_id, "a": case.assessment_id}
    params["f"] = case.finding_id
    if case.failure == "bad_date":
        # SQLite keeps any text in a date column; PostgreSQL keeps a year Python cannot hold.
        statement = "UPDATE business SET created_at = :v WHERE id = :b"
        params["v"] = f"{case.marker} is not a date" if sqlite else "20000-01-01 00:00:00+00"
        if not sqlite:
            statement = "UPDATE business SET created_at = CAST(:v AS timestamptz) WHERE id = :b"
    elif case.failure == "bad_number":
        statement = "UPDATE business SET rating = " + ("9e999" if sqlite else "'Infinity'")
        statement += " WHERE id = :b"
    elif case.failure == "number_as_text":  # SQLite only: text in an integer column
        statement = "UPDATE website_assessment SET performance = :v WHERE id = :a"
        params["v"] = f"n/a {case.marker}"
    elif case.failure == "bad_encoding":  # SQLite only: a byte sequence that is not UTF-8
        statement = (
            f"UPDATE {case.table} SET {case.column} = CAST(:v AS TEXT) WHERE {where[case.table]}"
        )
        params["v"] = case.marker.encode() + b" \xff\xfe"
    else:
        return
    with engine.begin() as conn:
        conn.execute(text(statement), params)


# -- what leaves the process -------------------------------------------------------------------


def protobuf_strings(message: Message) -> Iterator[str]:
    """Every string (and bytes, decoded) anywhere in a decoded protobuf message."""
    for _field, value in message.ListFields():
        repeated = not isinstance(value, str | bytes | Message | int | float | bool)
        items = value if repeated else [value]  # a repeated field's container
        for item in items:
            if isinstance(item, Message):
                yield from protobuf_strings(item)
            elif isinstance(item, str):
                yield item
            elif isinstance(item, bytes):
                yield item.decode("utf-8", "replace")


class _Server(ThreadingHTTPServer):
    """A local server whose handlers share what it received and how to behave."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], *, in_body: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.bodies: list[bytes] = []
        self.stop = threading.Event()
        self.in_body = in_body


class _Recorder(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.bodies.append(self.rfile.read(length))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def recording_server() -> Iterator[tuple[str, list[bytes]]]:
    """A Marquez stand-in on 127.0.0.1 keeping every body it is sent."""
    server = _Server(_Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", server.bodies
    finally:
        server.shutdown()
        server.server_close()


class _Drip(BaseHTTPRequestHandler):
    """Answers one byte at a time, forever: headers, or a body that never completes."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        stop = self.server.stop
        head = b"HTTP/1.1 200 OK\r\n"
        if self.server.in_body:
            head += b"Content-Length: 1000000\r\n\r\n"
        payload = head + b"x" * 1_000_000
        for index in range(len(payload)):
            if stop.wait(0.02):
                return
            try:
                self.wfile.write(payload[index : index + 1])
                self.wfile.flush()
            except OSError:
                return  # the client gave up: what we want

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def drip_server(*, in_body: bool) -> Iterator[str]:
    """A server on 127.0.0.1 that never finishes an answer but never falls silent either."""
    server = _Server(_Drip, in_body=in_body)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
