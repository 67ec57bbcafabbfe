"""RSS of one process generating 1,000 then 10,000 more reports with lineage on.

Run as ``python -m tests.memory_probe <database url> <work dir>``; prints one JSON line. It runs
in its own process so that nothing of the test runner (coverage's per-thread tracers, other
tests' objects) is measured with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

import otel_lineage
from d6_reports import db
from d6_reports.generator import GenerationOptions, ReportGenerator
from d6_reports.seed import seed_demo
from tests.fast_pdf import FastPDFConverter


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main(url: str, work: Path) -> None:
    engine = db.make_engine(url)
    sessions = db.make_session_factory(engine)
    with sessions() as session:
        ids = seed_demo(session, count=6) * 2000
    provider = TracerProvider(
        sampler=otel_lineage.LineageSampler(ParentBased(TraceIdRatioBased(0.01)))
    )
    lineage = otel_lineage.configure(
        tracer_provider=provider, database_url=url, engines=[engine], set_global=False
    )
    generator = ReportGenerator(
        sessions, work / "pdfs", tracer_provider=provider, converter=FastPDFConverter()
    )
    options = GenerationOptions("summary")
    for business_id in ids[:1000]:
        generator.generate_report_sync(business_id, options)
    lineage.flush(60)
    before = rss_kb()
    for business_id in ids[1000:11_000]:
        generator.generate_report_sync(business_id, options)
    lineage.flush(60)
    after = rss_kb()
    lineage.shutdown()
    generator.close()
    print(orjson.dumps({"before_kb": before, "after_kb": after}).decode())


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
