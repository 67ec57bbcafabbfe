"""A report process for crash tests: prints each generation id once generate_report returned,
then waits to be killed. Run as ``python -m tests.crash_worker <business id>...``."""

from __future__ import annotations

import sys
import time

import otel_lineage
from d6_reports.generator import GenerationOptions
from d6_reports.service import ReportService


def main(business_ids: list[int]) -> None:
    service = ReportService.from_settings()
    otel_lineage.configure(engines=[service.engine])
    for business_id in business_ids:
        result = service.generator.generate_report_sync(business_id, GenerationOptions("summary"))
        print(result.generation_id, flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]])
