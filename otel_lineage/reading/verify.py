"""Replay: can this PDF be reproduced from what its lineage row recorded?

Re-renders the stored input snapshot with the recorded template version and compares every
digest. This is the one place the plugin imports the report generator (lazily): replay needs
its templates and its converter, and nothing else in the plugin may depend on it.

The PDF bytes also depend on the font subsetter (HarfBuzz or fontTools: each deterministic, but
they write different fonts). The convert span records which one made the PDF
(``report.output.font_subsetter``, kept in the row's span tree); replay uses the same one when
this machine has it, and when it does not, the result says exactly that instead of a bare
mismatch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from otel_lineage import semconv
from otel_lineage.reading.exports import CorruptTraceError, TraceUnavailableError, span_tree
from otel_lineage.record import decompress, snapshot_size_limit

if TYPE_CHECKING:
    from d6_reports.pdf import FontSubsetter

_SUBSETTER_NAMES = {"harfbuzz": "HarfBuzz", "fonttools": "fontTools"}


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
    """``recorded_font_subsetter`` is None for rows made before it was recorded (or pruned);
    ``explanation`` says why the PDF bytes cannot match when the cause is known."""

    report_generation_id: str
    checks: list[Check] = field(default_factory=list)
    recorded_font_subsetter: str | None = None
    replay_font_subsetter: str | None = None
    explanation: str | None = None
    #: The renderer fingerprint the row recorded (None: not recorded) and this machine's.
    recorded_renderer: dict[str, Any] | None = None
    replay_renderer: dict[str, Any] | None = None
    #: What differs between the two, one phrase per part ("weasyprint 70.0 here, 71.0 then").
    renderer_differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def verdict(self) -> str:
        """One line for the CLI: reproduced, why it cannot be, or plainly not reproduced."""
        if self.ok:
            return "reproduced byte for byte"
        return self.explanation or "not reproduced"

    def as_dict(self) -> dict[str, Any]:
        """The answer as JSON, for the CLI's ``--json`` and the API alike."""
        return {
            "report_generation_id": self.report_generation_id,
            "ok": self.ok,
            "verdict": self.verdict,
            "explanation": self.explanation,
            "font_subsetter": {
                "recorded": self.recorded_font_subsetter,
                "replayed": self.replay_font_subsetter,
            },
            "renderer": {
                "recorded": self.recorded_renderer,
                "replayed": self.replay_renderer,
                "differences": self.renderer_differences,
            },
            "checks": [
                {
                    "what": c.what,
                    "recorded": c.recorded,
                    "actual": c.actual,
                    "ok": c.ok,
                    "result": "matched" if c.ok else "differed",
                }
                for c in self.checks
            ],
        }


def verify(row: Mapping[str, Any]) -> VerifyResult:
    from d6_reports.errors import ReportError, TemplateNotFoundError
    from d6_reports.pdf import PDFConverter, available_font_subsetter
    from d6_reports.templates import TemplateRegistry

    result = VerifyResult(str(row["report_generation_id"]))
    result.recorded_renderer = readable_renderer(row.get("renderer"))
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
        html = registry.render_report(
            template,
            orjson.loads(snapshot),
            generation_id=str(row["report_generation_id"]),
            inputs_sha256=str(row["inputs_sha256"]),
        )
        result.checks.append(
            Check("html sha256", row["html_sha256"], hashlib.sha256(html.encode()).hexdigest())
        )
        result.recorded_font_subsetter = recorded_font_subsetter(row)
        replay_with = _replay_subsetter(result.recorded_font_subsetter, available_font_subsetter())
        pdf = PDFConverter().convert(
            html, asset_root=template.directory, font_subsetter=replay_with
        )
    except ReportError as exc:
        raise VerifyError(f"re-rendering failed: {exc}") from exc
    result.replay_font_subsetter = pdf.font_subsetter
    result.replay_renderer = {
        **dict(item.partition(" ")[::2] for item in pdf.renderer),
        "font_subsetter": pdf.font_subsetter,
        "fonts": [{"family": f.family, "sha256": f.sha256} for f in pdf.fonts],
    }
    result.renderer_differences = renderer_differences(
        result.recorded_renderer, result.replay_renderer
    )
    result.checks.append(Check("pdf sha256", row["output_sha256"], pdf.sha256))
    result.explanation = _explain(result)
    return result


def readable_renderer(value: object) -> dict[str, Any] | None:
    """A stored fingerprint in the shape readers expect, whatever the column holds: text
    values, fonts as ``{"family", "sha256"}`` strings; None when it is not a fingerprint at all
    (not recorded, or edited into something else)."""
    if not isinstance(value, dict):
        return None
    out: dict[str, Any] = {
        str(k): None if v is None else str(v)[:200] for k, v in value.items() if k != "fonts"
    }
    fonts = value.get("fonts")
    out["fonts"] = [
        {"family": str(f.get("family"))[:200], "sha256": str(f.get("sha256"))[:64]}
        for f in (fonts if isinstance(fonts, list) else ())
        if isinstance(f, dict)
    ]
    return out


def renderer_differences(
    recorded: Mapping[str, Any] | None, replayed: Mapping[str, Any]
) -> list[str]:
    """Each part of the renderer that differs between a row's fingerprint and a replay's.

    Library versions first (the usual cause after an upgrade), then the fonts: a family whose
    file changed, one the original embedded that the replay did not, and the reverse.
    """
    if recorded is None:
        return []
    differences = []
    for name, was in recorded.items():
        if name == "fonts":
            continue
        now = replayed.get(name)
        if was != now:
            differences.append(f"{name} {now or 'absent'} here, {was or 'absent'} then")
    then = {(f.get("family"), f.get("sha256")) for f in recorded.get("fonts") or ()}
    here = {(f["family"], f["sha256"]) for f in replayed.get("fonts") or ()}
    for family, digest in sorted(then - here, key=str):
        changed = sorted(d for f, d in here - then if f == family)
        if changed:
            differences.append(
                f"font {family}: file sha256 {changed[0][:12]} here, {str(digest)[:12]} then"
            )
        else:
            differences.append(f"font {family} ({str(digest)[:12]}) was embedded then, not here")
    for family, digest in sorted(here - then):
        if not any(f == family for f, _ in then - here):
            differences.append(f"font {family} ({digest[:12]}) is embedded here, not then")
    return differences


def recorded_font_subsetter(row: Mapping[str, Any]) -> str | None:
    """The subsetter the convert span recorded in the row's stored span tree, if any."""
    try:
        tree = span_tree(row, checked=False)  # one attribute is all it reads
    except (TraceUnavailableError, CorruptTraceError):
        return None  # nothing recorded to replay with: this machine's subsetter
    for span in tree.get("spans") or ():
        attributes = span.get("attributes") if isinstance(span, dict) else None
        value = (
            attributes.get(semconv.OUTPUT_FONT_SUBSETTER) if isinstance(attributes, dict) else None
        )
        if value in _SUBSETTER_NAMES:
            return str(value)
    return None


def _replay_subsetter(recorded: str | None, available: FontSubsetter) -> FontSubsetter:
    """The recorded subsetter when this machine has it (fontTools always is), else its own."""
    if recorded == "fonttools":
        return "fonttools"
    return available


def _explain(result: VerifyResult) -> str | None:
    """Why the PDF differs, when the cause is known: the replay could not use the original's
    font subsetter, or another part of the renderer differs (``renderer_differences``)."""
    pdf_check = result.checks[-1]
    recorded, replayed = result.recorded_font_subsetter, result.replay_font_subsetter
    if pdf_check.ok or replayed is None:
        return None
    others = [c for c in result.checks if c.what in ("template sha256", "html sha256")]
    differing = [c.what.removesuffix(" sha256") for c in others if not c.ok]
    inputs = (
        "template and HTML digests match"
        if not differing
        else f"{' and '.join(differing)} digests differ too"
    )
    if recorded == replayed:
        if not result.renderer_differences:
            return None
        return (
            f"the renderer differs: {'; '.join(result.renderer_differences)}: PDF bytes cannot "
            f"be expected to match; {inputs}"
        )
    here = _SUBSETTER_NAMES[replayed]
    if recorded is None:
        return (
            "the row does not record which font subsetter made the PDF; this machine subsets "
            f"with {here}: PDF bytes may not match; {inputs}"
        )
    return (
        f"made with {_SUBSETTER_NAMES[recorded]} subsetting; this machine subsets with {here}: "
        f"PDF bytes cannot match; {inputs}"
    )


def stored_snapshot(row: Mapping[str, Any]) -> bytes:
    """The decompressed input snapshot of ``row``, checked; VerifyError says why not.

    The snapshot is inline (rows older than revision 0010) or shared and maybe encrypted
    (``protection.snapshots``): an absent or destroyed key is a VerifyError naming it.
    """
    # Imported here: this function is the only part of replay that knows about protection.
    from otel_lineage.protection.snapshots import (
        SnapshotUnreadableError,
        has_snapshot,
        snapshot_blob,
    )

    if not has_snapshot(row):
        why = f"pruned at {row['pruned_at']}" if row.get("pruned_at") else "never captured"
        raise VerifyError(
            f"report {row['report_generation_id']} has no stored input snapshot ({why})"
        )
    try:
        blob, codec = snapshot_blob(row)
    except SnapshotUnreadableError as exc:
        raise VerifyError(str(exc)) from None
    try:
        data = decompress(blob, codec, max_bytes=snapshot_size_limit(row))
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
