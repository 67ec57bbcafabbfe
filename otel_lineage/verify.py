"""Replay: can this PDF be reproduced from what its lineage row recorded?

Re-renders the stored input snapshot with the recorded template version and compares every
digest. This is the one place the plugin imports the report generator (lazily): replay needs
its templates and its converter, and nothing else in the plugin may depend on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from otel_lineage.record import decompress


class VerifyError(Exception):
    """The row cannot be replayed at all (no snapshot, corrupt blob, template gone)."""


@dataclass
class Check:
    what: str
    recorded: str | None
    actual: str | None

    @property
    def ok(self) -> bool:
        return self.recorded == self.actual


@dataclass
class VerifyResult:
    report_generation_id: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def verify(row: Mapping[str, Any]) -> VerifyResult:
    from d6_reports.errors import ReportError, TemplateNotFoundError
    from d6_reports.pdf import PDFConverter
    from d6_reports.templates import TemplateRegistry

    result = VerifyResult(str(row["report_generation_id"]))
    snapshot = stored_snapshot(row)
    result.checks.append(
        Check("inputs snapshot sha256", row["inputs_sha256"], hashlib.sha256(snapshot).hexdigest())
    )
    registry = TemplateRegistry()
    try:
        template = registry.resolve(str(row["template_name"]), str(row["template_version"]))
    except TemplateNotFoundError as exc:
        raise VerifyError(
            f"template {row['template_name']} {row['template_version']} is no longer installed: "
            f"{exc}"
        ) from exc
    result.checks.append(Check("template sha256", row["template_sha256"], template.sha256))
    import orjson

    try:
        html = registry.render(template, orjson.loads(snapshot))
        result.checks.append(
            Check("html sha256", row["html_sha256"], hashlib.sha256(html.encode()).hexdigest())
        )
        pdf = PDFConverter().convert(html, asset_root=template.directory)
    except ReportError as exc:
        raise VerifyError(f"re-rendering failed: {exc}") from exc
    result.checks.append(Check("pdf sha256", row["output_sha256"], pdf.sha256))
    return result


def stored_snapshot(row: Mapping[str, Any]) -> bytes:
    """The decompressed input snapshot of ``row``, checked; VerifyError says why not."""
    blob = row.get("inputs_snapshot")
    if blob is None:
        why = f"pruned at {row['pruned_at']}" if row.get("pruned_at") else "never captured"
        raise VerifyError(
            f"report {row['report_generation_id']} has no stored input snapshot ({why})"
        )
    try:
        data = decompress(bytes(blob), row.get("inputs_codec") or "zstd")
    except Exception as exc:
        raise VerifyError(
            f"the stored input snapshot of report {row['report_generation_id']} is corrupt: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if hashlib.sha256(data).hexdigest() != row["inputs_sha256"]:
        raise VerifyError(
            f"the stored input snapshot of report {row['report_generation_id']} does not match "
            f"its recorded sha256 {row['inputs_sha256']}"
        )
    return data
