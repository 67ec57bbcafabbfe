"""``python -m bench.overhead``: what tracing and lineage add to a report, and why.

Four parts, each answering a question the end-to-end figure alone cannot:

1. **Interleaved set-ups** (is lineage's cost visible on a real report?). The real
   ``ReportGenerator`` with the fast PDF stand-in (WeasyPrint's 30-40 ms of noise would drown a
   sub-millisecond figure) on the demo's one-page report, SQLAlchemy instrumented as in
   zero-code mode, under: no SDK, tracing only, tracing + lineage (durable outbox, rows to SQLite
   and, when it answers, PostgreSQL), lineage recording every span, the flag off, and recording
   every span with no lineage processor. R rounds of B reports per set-up, the order shuffled per
   round (seeded) so drift and other users of the machine hit every set-up alike. Per report:
   wall time; per block: CPU of all threads (``process_time``), read after the block's spans
   and lineage rows are flushed so the writer's work is inside its block. Differences are paired
   per round against tracing only, with 95% confidence intervals.
2. **Growth** (what does lineage cost per KB of snapshot and per span?): synthetic report
   traces through the real sampler, processor, outbox, writer and SQLite store; least-squares
   lines.
3. **Floor** (how far from the least possible work?): sha256 + zstd of the snapshot, JSON + zstd
   of the span tree, one prepared SQLite insert, for the demo report's own bytes; hot (tight
   loop) and cold (after cache-evicting work, as once per report), since the two differ ~7x.
4. **Designs** (PostgreSQL): ``bench.durability``'s comparison, writer throughput and the gap
   until a row is visible, with the fast converter.

Results: ``bench/results/overhead.json`` and ``overhead.md``. ``--quick`` checks the harness in
about two minutes; the default run takes about six on two cores.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import NoOpTracerProvider, SpanKind, Tracer
from opentelemetry.util.types import Attributes
from sqlalchemy import create_engine, select

import otel_lineage
from bench.common import NullExporter, TimedProcessor, TimedStore, pct
from d6_reports import db
from d6_reports.generator import GenerationOptions, ReportGenerator
from d6_reports.seed import seed_demo
from otel_lineage import semconv as sc
from otel_lineage.delivery.engines import create_lineage_engine
from otel_lineage.delivery.outbox import OutboxHandOff
from otel_lineage.delivery.schema import report_lineage
from otel_lineage.delivery.stats import LineageStats
from otel_lineage.delivery.writer import BackgroundWriter
from otel_lineage.record import ZSTD_LEVEL, decompress
from otel_lineage.startup.detachable import ForwardingTracer
from tests.fast_pdf import FastPDFConverter

RESULTS = Path(__file__).parent / "results"
OPTIONS = GenerationOptions("summary")
RATIO = 0.1
BASELINE = "tracing_only"
SEED = 13


# -- statistics ------------------------------------------------------------------------------


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (Cornish-Fisher expansion; within 1e-3 of the exact value from
    about 8 degrees of freedom): no scipy in the environment, and R is 10-40 here."""
    z = statistics.NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def paired(diffs: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """Median and mean of per-round paired differences, with 95% intervals: a t-interval for
    the mean, a seeded percentile bootstrap (2,000 resamples) for the median."""
    n = len(diffs)
    mean = statistics.fmean(diffs)
    half = t_quantile(0.975, n - 1) * statistics.stdev(diffs) / math.sqrt(n) if n > 1 else 0.0
    rng = random.Random(SEED)
    boot = sorted(statistics.median(rng.choices(diffs, k=n)) for _ in range(2000))
    return {
        "rounds": n,
        "median": round(statistics.median(diffs), digits),
        "median_ci95_bootstrap": [round(boot[49], digits), round(boot[1949], digits)],
        "mean": round(mean, digits),
        "mean_ci95_t": [round(mean - half, digits), round(mean + half, digits)],
    }


def _minus(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """Paired differences, round by round."""
    return [x - y for x, y in zip(xs, ys, strict=True)]


def fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares line ``y = slope * x + intercept``."""
    slope, intercept = statistics.linear_regression(xs, ys)
    return {"slope": round(slope, 4), "intercept": round(intercept, 2)}


# -- set-ups --------------------------------------------------------------------------------


def thread_cpu_ns(native_id: int | None) -> int:
    """CPU time of one thread of this process, in ns (Linux ``schedstat``); 0 elsewhere."""
    if native_id is None:
        return 0
    try:
        with open(f"/proc/self/task/{native_id}/schedstat") as stat:
            return int(stat.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def lineage_sampler(delegate: Sampler, recording: str | None = None) -> Sampler:
    """A ``LineageSampler`` with the given recording policy (its default when None)."""
    if recording is None:
        return otel_lineage.LineageSampler(delegate)
    return otel_lineage.LineageSampler(delegate, span_recording=recording)


class SwitchTracerProvider(trace.TracerProvider):
    """Hands out tracers that start spans on whichever provider is ``current``.

    The SQLAlchemy instrumentation can be installed once per process; through this switch the
    one report engine is traced by the provider of the set-up whose block is running.
    """

    def __init__(self) -> None:
        self.current: trace.TracerProvider = NoOpTracerProvider()
        self._real: dict[tuple[int, str], Tracer] = {}

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> Tracer:
        args = (instrumenting_library_version, schema_url, attributes)
        return _SwitchTracer(self, instrumenting_module_name, args, {})

    def real(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tracer:
        key = (id(self.current), name)
        tracer = self._real.get(key)
        if tracer is None:
            tracer = self._real[key] = self.current.get_tracer(name, *args, **kwargs)
        return tracer


class _SwitchTracer(ForwardingTracer):
    """Forwards to the tracer of whichever provider is the switch's ``current``."""

    def __init__(
        self, switch: SwitchTracerProvider, name: str, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> None:
        self._switch, self._name, self._args, self._kwargs = switch, name, args, kw

    @property
    def real(self) -> Tracer:  # type: ignore[override]
        return self._switch.real(self._name, self._args, self._kwargs)


@dataclass
class Setup:
    name: str
    provider: trace.TracerProvider
    generator: ReportGenerator
    lineage: otel_lineage.Lineage | None = None
    walls_ms: list[float] = field(default_factory=list)
    block_medians_ms: list[float] = field(default_factory=list)
    block_cpu_ms: list[float] = field(default_factory=list)  # CPU per report, per block
    hook_ns: int = 0
    writer_ns: int = 0
    writer_thread_ns: int = 0  # all of the writer thread: take, decode, write, ack
    records: int = 0

    def writer_thread_cpu_ns(self) -> int:
        """CPU time of this set-up's writer thread so far (0 without one)."""
        writer = self.lineage.processor.writer if self.lineage and self.lineage.processor else None
        return thread_cpu_ns(writer.thread_id if writer is not None else None)

    def flush(self) -> None:
        """Spans exported and lineage rows written: the same call for every SDK set-up."""
        if isinstance(self.provider, TracerProvider):
            assert self.provider.force_flush(120_000), f"{self.name}: flush timed out"


class Harness:
    """The set-ups of part 1 on one seeded SQLite report database."""

    def __init__(self, tmp: Path, postgres: str | None) -> None:
        self.tmp = tmp
        self.url = f"sqlite:///{tmp / 'reports.db'}"
        db.upgrade(self.url)
        self.engine = db.make_engine(self.url)
        self.sessions = db.make_session_factory(self.engine)
        with self.sessions() as session:
            self.business = seed_demo(session)[0]
        self.switch = SwitchTracerProvider()
        self.setups: dict[str, Setup] = {}
        self._outbox_env = os.environ.get("OTEL_LINEAGE_OUTBOX")
        self.delegate = ParentBased(TraceIdRatioBased(RATIO))
        self._add("no_sdk", NoOpTracerProvider())
        self._add("tracing_only", self._provider(self.delegate))
        self._add_lineage("tracing_lineage", self.url, "report")
        if postgres is not None:
            self._add_lineage("tracing_lineage_pg", postgres, "report")
        self._add_lineage("tracing_lineage_record_all", self.url, "all")
        self._add_lineage("lineage_flag_off", self.url, None, enabled=False)
        self._add("record_everything", self._provider(lineage_sampler(self.delegate, "all")))
        # What lineage's sampler makes the SDK record (the report's own spans), without lineage's
        # processor: splits lineage's cost into the SDK's recording and lineage's own work.
        self._add("record_report_spans", self._provider(lineage_sampler(self.delegate, "report")))
        # Instrumented last: the lineage stores' engines, created above, are not traced.
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        SQLAlchemyInstrumentor().instrument(engines=[self.engine], tracer_provider=self.switch)

    def _provider(self, sampler: Sampler) -> TracerProvider:
        provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(NullExporter()))
        return provider

    def _add(
        self, name: str, provider: trace.TracerProvider, lineage: otel_lineage.Lineage | None = None
    ) -> None:
        generator = ReportGenerator(
            self.sessions, self.tmp / "pdf", converter=FastPDFConverter(), tracer_provider=provider
        )
        self.setups[name] = Setup(name, provider, generator, lineage)

    def _add_lineage(
        self, name: str, url: str, recording: str | None, *, enabled: bool = True
    ) -> None:
        sampler = lineage_sampler(self.delegate, recording) if enabled else self.delegate
        provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(NullExporter()))
        os.environ["OTEL_LINEAGE_OUTBOX"] = str(self.tmp / f"outbox-{name}")  # the durable one
        lineage = otel_lineage.configure(
            tracer_provider=provider, database_url=url, enabled=enabled, set_global=False
        )
        if lineage.processor is not None and lineage.store is not None:
            assert isinstance(lineage.processor.handoff, OutboxHandOff), lineage.outbox_problem
            lineage.processor.__class__ = TimedProcessor  # same objects, measured
            lineage.store.__class__ = TimedStore
        self._add(name, provider, lineage)

    def block(self, setup: Setup, reports: int) -> None:
        """``reports`` reports; CPU read after the flush so the writer's work is included."""
        self.switch.current = setup.provider
        generate = setup.generator.generate_report_sync
        gc.collect()  # every block starts from the same collector state
        hooks, writes, records = TimedProcessor.hook_ns, TimedStore.write_ns, TimedStore.records
        writer_thread = setup.writer_thread_cpu_ns()
        cpu = time.process_time()
        walls = []
        for _ in range(reports):
            started = time.perf_counter()
            generate(self.business, OPTIONS)
            walls.append((time.perf_counter() - started) * 1000)
        setup.flush()
        setup.block_cpu_ms.append((time.process_time() - cpu) * 1000 / reports)
        setup.walls_ms += walls
        setup.block_medians_ms.append(statistics.median(walls))
        setup.hook_ns += TimedProcessor.hook_ns - hooks
        setup.writer_ns += TimedStore.write_ns - writes
        setup.writer_thread_ns += setup.writer_thread_cpu_ns() - writer_thread
        setup.records += TimedStore.records - records

    def run(self, rounds: int, block: int, warm: int) -> dict[str, Any]:
        for setup in self.setups.values():
            self.block(setup, warm)
        for setup in self.setups.values():  # warm-up is not counted
            setup.walls_ms, setup.block_medians_ms, setup.block_cpu_ms = [], [], []
            setup.hook_ns = setup.writer_ns = setup.writer_thread_ns = setup.records = 0
        rng = random.Random(SEED)
        order = list(self.setups.values())
        for done in range(rounds):
            rng.shuffle(order)
            for setup in order:
                self.block(setup, block)
            _say(f"round {done + 1}/{rounds}")
        return self.figures(rounds, block)

    def figures(self, rounds: int, block: int) -> dict[str, Any]:
        base = self.setups[BASELINE]
        per_setup: dict[str, Any] = {}
        for name, s in self.setups.items():
            reports = len(s.walls_ms)
            entry: dict[str, Any] = {
                "reports": reports,
                "median_ms": round(statistics.median(s.walls_ms), 3),
                "p99_ms": round(pct(s.walls_ms, 0.99), 3),
                "cpu_ms_per_report": round(statistics.fmean(s.block_cpu_ms), 3),
            }
            if s.lineage is not None and s.lineage.processor is not None:
                entry["hooks_us_per_report"] = round(s.hook_ns / reports / 1e3, 1)
                entry["writer_cpu_us_per_record"] = round(s.writer_ns / max(s.records, 1) / 1e3, 1)
                entry["writer_thread_us_per_record"] = round(
                    s.writer_thread_ns / max(s.records, 1) / 1e3, 1
                )
                entry["records_written"] = s.records
            if name != BASELINE:
                wall = _minus(s.block_medians_ms, base.block_medians_ms)
                cpu = _minus(s.block_cpu_ms, base.block_cpu_ms)
                entry["over_tracing_only"] = {
                    "wall_ms": paired(wall),
                    "cpu_ms": paired(cpu),
                    "p99_ms": round(pct(s.walls_ms, 0.99) - pct(base.walls_ms, 0.99), 3),
                    "p99_ratio": round(pct(s.walls_ms, 0.99) / pct(base.walls_ms, 0.99), 2),
                }
            per_setup[name] = entry
        return {
            "rounds": rounds,
            "block": block,
            "ratio": RATIO,
            "setups": per_setup,
            "decomposition": self.decomposition(),
        }

    def decomposition(self) -> dict[str, Any]:
        """Lineage over tracing only, in two paired parts: the SDK recording the report's spans
        (``record_report_spans`` over tracing only) and lineage's own work on them, processor,
        outbox and writer (each lineage set-up under ``report`` over ``record_report_spans``)."""
        base, recording = self.setups[BASELINE], self.setups["record_report_spans"]
        parts: dict[str, Any] = {
            "recording": {
                "wall_ms": paired(_minus(recording.block_medians_ms, base.block_medians_ms)),
                "cpu_ms": paired(_minus(recording.block_cpu_ms, base.block_cpu_ms)),
            }
        }
        for name in ("tracing_lineage", "tracing_lineage_pg"):
            s = self.setups.get(name)
            if s is not None:
                parts[name] = {
                    "wall_ms": paired(_minus(s.block_medians_ms, recording.block_medians_ms)),
                    "cpu_ms": paired(_minus(s.block_cpu_ms, recording.block_cpu_ms)),
                }
        return parts

    def demo_report(self, name: str) -> dict[str, Any]:
        """One unsampled report of set-up ``name`` as its lineage row and carrier saw it: the
        span count, the snapshot and span tree bytes (the floor's input)."""
        setup = self.setups[name]
        self.switch.current = setup.provider
        seen: dict[str, Any] = {}

        class Keep(TimedProcessor):
            def on_start(self, span: Any, parent_context: Any = None) -> None:
                carrier = otel_context.get_value(sc.REPORT_CONTEXT_KEY, parent_context)
                if span.name == sc.SPAN_GENERATE and isinstance(carrier, dict):
                    seen["carrier"] = carrier
                super().on_start(span, parent_context)

        processor = setup.lineage.processor if setup.lineage else None
        assert processor is not None
        processor.__class__ = Keep
        for _ in range(50):  # 1 in 10 is sampled, and a sampled trace records every span
            result = setup.generator.generate_report_sync(self.business, OPTIONS)
            setup.flush()
            with self.engine.connect() as conn:
                query = select(report_lineage).where(
                    report_lineage.c.report_generation_id == result.generation_id
                )
                row = conn.execute(query).mappings().one()
            if not row["sampled"]:
                break
        processor.__class__ = TimedProcessor
        snapshot = seen["carrier"][sc.INPUTS_SNAPSHOT]
        assert isinstance(snapshot, bytes)
        return {
            "span_count": row["span_count"],
            "span_recording": row.get("span_recording"),
            "snapshot": snapshot,
            "span_tree": decompress(row["span_tree"]),
        }

    def close(self) -> None:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        SQLAlchemyInstrumentor().uninstrument()
        for setup in self.setups.values():
            if setup.lineage is not None:
                setup.lineage.shutdown()
            if isinstance(setup.provider, TracerProvider):
                setup.provider.shutdown()
            setup.generator.close()
        os.environ.pop("OTEL_LINEAGE_OUTBOX", None)
        if self._outbox_env is not None:
            os.environ["OTEL_LINEAGE_OUTBOX"] = self._outbox_env
        self.engine.dispose()


# -- part 2: growth on synthetic traces -----------------------------------------------------

_FIRST = ("Ana", "Bo", "Chidi", "Dana", "Eun-ji", "Farid", "Grete", "Hiro", "Ines", "Jonas")
_LAST = ("Okafor", "Silva", "Nakamura", "Berg", "Kowalski", "Haddad", "Moreau", "Quist")


def snapshot_bytes(target: int, seed: int = SEED) -> bytes:
    """JSON records like a report's inputs (names, e-mails, amounts, dates, categories):
    compressible as real inputs are, not one repeated string."""
    rng = random.Random(seed)
    records = []
    size = 20
    while size < target:
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        record = {
            "id": rng.randrange(10**9),
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}{rng.randrange(1000)}@example.com",
            "amount": round(rng.uniform(-5000, 50000), 2),
            "date": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
            "category": rng.choice(("rent", "payroll", "supplies", "travel", "tax", "fees")),
            "note": rng.choice(("", "late", "recurring", "disputed", "paid in two parts")),
        }
        records.append(record)
        size += len(orjson.dumps(record)) + 1
    return orjson.dumps({"business": {"name": "Synthetic Ltd"}, "transactions": records})


def unique(snapshot: bytes, n: int) -> bytes:
    """``snapshot`` made distinct per report, so the store's dedup never hides the write."""
    return b'{"n":%d,' % n + snapshot[1:]


_SQL_ATTRS = {
    "db.system": "sqlite",
    "db.name": "reports",
    "db.statement": "SELECT business.id, business.name FROM business WHERE business.id = ?",
}


def synthetic_report(tracer: Tracer, snapshot: bytes, steps_extra: int, sql: int) -> None:
    """A report trace shaped like the generator's: root with its carrier, the four steps, plus
    ``steps_extra`` step-like ``report.*`` spans under the root and ``sql`` library spans
    spread over the steps."""
    digest = hashlib.sha256(snapshot).hexdigest()
    generation = str(uuid.uuid4())
    carrier = {
        sc.GENERATION_ID: generation,
        sc.INPUTS_SNAPSHOT: snapshot,
        sc.INPUTS_SHA256: digest,
        sc.INPUTS_BYTES: len(snapshot),
        sc.BUSINESS_ID: 1,
    }
    root_context = otel_context.set_value(sc.REPORT_CONTEXT_KEY, carrier, Context())
    attrs: dict[str, str | int] = {sc.GENERATION_ID: generation, sc.BUSINESS_ID: 1}
    with tracer.start_as_current_span(sc.SPAN_GENERATE, context=root_context, attributes=attrs):
        for index, name in enumerate(sc.STEP_SPANS):
            with tracer.start_as_current_span(name) as span:
                if index == 0:
                    span.set_attribute(sc.INPUTS_SHA256, digest)
                    span.set_attribute(sc.INPUTS_BYTES, len(snapshot))
                share = sql // 4 + (1 if index < sql % 4 else 0)
                for _ in range(share):
                    with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as q:
                        q.set_attributes(_SQL_ATTRS)
        for index in range(steps_extra):
            with tracer.start_as_current_span(f"report.extra_{index % 10}") as span:
                span.set_attribute("report.extra.index", index)


@dataclass
class Synthetic:
    """Tracing only, sampler only, and the full lineage pipeline, for synthetic traces."""

    plain: TracerProvider
    sampler_only: TracerProvider
    lineage: TracerProvider
    processor: TimedProcessor
    url: str

    @classmethod
    def create(cls, tmp: Path, recording: str | None) -> Synthetic:
        delegate = ParentBased(TraceIdRatioBased(0.0))  # unsampled: the common case
        name = f"synthetic-{recording}-{uuid.uuid4().hex[:6]}"
        url = f"sqlite:///{tmp / (name + '.db')}"
        db.upgrade(url)
        handoff = OutboxHandOff(tmp / name)
        store = TimedStore(create_lineage_engine(url))
        stats = LineageStats()
        writer = BackgroundWriter(handoff, store, stats)
        processor = TimedProcessor(handoff, writer, stats=stats)
        lineage = TracerProvider(sampler=lineage_sampler(delegate, recording))
        lineage.add_span_processor(processor)
        return cls(
            plain=TracerProvider(sampler=delegate),
            sampler_only=TracerProvider(sampler=lineage_sampler(delegate, recording)),
            lineage=lineage,
            processor=processor,
            url=url,
        )

    def measure(
        self, reports: int, repeats: int, make: Callable[[Tracer, int], None]
    ) -> dict[str, float]:
        """µs per report: CPU of all threads per configuration (flushed), hook time."""
        cpu = {"plain": 0.0, "sampler_only": 0.0, "lineage": 0.0}
        hooks = 0
        count = 0
        for _ in range(repeats):  # interleaved, so drift hits the three alike
            for label, provider in (
                ("plain", self.plain),
                ("sampler_only", self.sampler_only),
                ("lineage", self.lineage),
            ):
                tracer = provider.get_tracer("bench")
                gc.collect()
                before, started = TimedProcessor.hook_ns, time.process_time()
                for _ in range(reports):
                    count += 1
                    make(tracer, count)
                assert provider.force_flush(120_000)
                cpu[label] += time.process_time() - started
                if label == "lineage":
                    hooks += TimedProcessor.hook_ns - before
        n = reports * repeats
        return {
            "report_thread_us": round(hooks / n / 1e3, 2),
            "cpu_plain_us": round(cpu["plain"] / n * 1e6, 2),
            "cpu_sampler_only_us": round(cpu["sampler_only"] / n * 1e6, 2),
            "cpu_lineage_us": round(cpu["lineage"] / n * 1e6, 2),
            "all_threads_us": round((cpu["lineage"] - cpu["plain"]) / n * 1e6, 2),
            "all_threads_over_sampler_only_us": round(
                (cpu["lineage"] - cpu["sampler_only"]) / n * 1e6, 2
            ),
        }

    def close(self) -> None:
        for provider in (self.plain, self.sampler_only, self.lineage):
            provider.shutdown()


def growth(tmp: Path, quick: bool, demo_snapshot: bytes) -> dict[str, Any]:
    """Part 2: per-KB and per-span coefficients of lineage's work."""
    out: dict[str, Any] = {}
    sizes = (1 << 10, 10 << 10, 100 << 10, 1 << 20, 5 << 20)
    counts = {1 << 10: 200, 10 << 10: 200, 100 << 10: 60, 1 << 20: 12, 5 << 20: 4}
    pipeline = Synthetic.create(tmp, None)
    points = []
    for size in sizes:
        base = snapshot_bytes(size)
        reports = max(2, counts[size] // (4 if quick else 1))

        def sized(tracer: Tracer, n: int, base: bytes = base) -> None:
            synthetic_report(tracer, unique(base, n), 0, 8)  # the copy costs every set-up

        figures = pipeline.measure(reports, 3, sized)
        points.append({"kb": round(len(base) / 1024, 1), "reports": reports * 3, **figures})
        _say(f"snapshot {len(base) >> 10} KB: {figures}")
    pipeline.close()
    kbs = [p["kb"] for p in points]
    out["snapshot"] = {
        "spans_per_trace": 13,
        "points": points,
        "report_thread_us_per_kb": fit(kbs, [p["report_thread_us"] for p in points]),
        "all_threads_us_per_kb": fit(kbs, [p["all_threads_us"] for p in points]),
        # Without the 5 MB point, which alone sets the slope of a least-squares line.
        "report_thread_us_per_kb_to_1mb": fit(
            kbs[:-1], [p["report_thread_us"] for p in points[:-1]]
        ),
        "all_threads_us_per_kb_to_1mb": fit(kbs[:-1], [p["all_threads_us"] for p in points[:-1]]),
    }
    policies: tuple[str | None, ...] = ("report", "all")
    totals = (5, 50, 200, 1000, 2000)
    spans: dict[str, Any] = {}
    for policy in policies:
        pipeline = Synthetic.create(tmp, policy)
        for kind in ("report_spans", "library_spans"):
            rows = []
            for total in totals:
                extra = total - 5
                reports = max(3, (8000 if not quick else 2000) // total)

                def make(tracer: Tracer, n: int, extra: int = extra, kind: str = kind) -> None:
                    steps, sql = (extra, 0) if kind == "report_spans" else (0, extra)
                    synthetic_report(tracer, unique(demo_snapshot, n), steps, sql)

                figures = pipeline.measure(reports, 3, make)
                rows.append({"spans": total, "extra": extra, "reports": reports * 3, **figures})
            extras = [r["extra"] for r in rows]
            spans[f"{policy or 'legacy'}/{kind}"] = {
                "points": rows,
                "report_thread_us_per_span": fit(extras, [r["report_thread_us"] for r in rows]),
                "all_threads_us_per_span": fit(extras, [r["all_threads_us"] for r in rows]),
                "over_sampler_only_us_per_span": fit(
                    extras, [r["all_threads_over_sampler_only_us"] for r in rows]
                ),
            }
            label = f"{policy or 'legacy'}/{kind}"
            _say(f"spans {label}: {spans[label]}")
        pipeline.close()
    out["spans"] = spans
    return out


# -- part 3: the floor ----------------------------------------------------------------------


def floor(tmp: Path, snapshot: bytes, span_tree: bytes, n: int) -> dict[str, Any]:
    """The least work a lineage row of this report needs, each piece timed alone (µs)."""
    import zstandard

    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    document = orjson.loads(span_tree)
    conn = sqlite3.connect(tmp / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, trace_id TEXT, snap BLOB, tree BLOB)")
    packed_snapshot = compressor.compress(snapshot)
    packed_tree = compressor.compress(span_tree)
    sql = "INSERT INTO t (trace_id, snap, tree) VALUES (?, ?, ?)"

    def insert() -> None:
        conn.execute(sql, (uuid.uuid4().hex, packed_snapshot, packed_tree))

    pieces: dict[str, Callable[[], object]] = {
        "sha256_snapshot": lambda: hashlib.sha256(snapshot).hexdigest(),
        "zstd_snapshot": lambda: compressor.compress(snapshot),
        "orjson_span_tree": lambda: orjson.dumps(document),
        "zstd_span_tree": lambda: compressor.compress(span_tree),
        "sqlite_insert": insert,
    }
    out: dict[str, Any] = {
        "snapshot_bytes": len(snapshot),
        "span_tree_bytes": len(span_tree),
        "zstd_level": ZSTD_LEVEL,
        "n_hot": n,
        "n_cold": max(50, n // 8),
    }
    for name, work in pieces.items():  # hot: each piece in a tight loop
        work()
        times = []
        for _ in range(n):
            started = time.perf_counter_ns()
            work()
            times.append(time.perf_counter_ns() - started)
        out[f"{name}_us"] = round(statistics.median(times) / 1e3, 2)
    out["total_us"] = round(sum(out[f"{name}_us"] for name in pieces), 2)
    # Cold: the five pieces once in a row after other work has evicted the caches, as they run
    # once per report after the report's own work. An insert costs several times more so.
    junk, words = os.urandom(8 << 20), [str(i) for i in range(50_000)]
    cold: dict[str, list[int]] = {name: [] for name in pieces}
    for _ in range(out["n_cold"]):
        hashlib.sha256(junk).digest()
        sorted(words, key=hash)
        for name, work in pieces.items():
            started = time.perf_counter_ns()
            work()
            cold[name].append(time.perf_counter_ns() - started)
    for name, times in cold.items():
        out[f"cold_{name}_us"] = round(statistics.median(times) / 1e3, 2)
    out["cold_total_us"] = round(sum(out[f"cold_{name}_us"] for name in pieces), 2)
    conn.close()
    return out


# -- part 4: designs (PostgreSQL) -----------------------------------------------------------


def designs(postgres: str, tmp: Path, plan: Plan, snapshot: bytes) -> dict[str, Any]:
    """Part 4, each in its own scratch schema; the writer's records carry a distinct copy of
    the demo snapshot each (the stored template row has none: snapshots live in their own
    table)."""
    from bench import durability

    converter = FastPDFConverter()
    with durability.postgres_schema(postgres) as scoped:
        _say("designs (PostgreSQL)")
        out: dict[str, Any] = {
            "designs": durability.design_comparison(
                scoped, tmp / "designs", plan.design_reports, converter
            )
        }
        _say("writer throughput (PostgreSQL)")
        out["writer"] = durability.writer_throughput(scoped, plan.writer_records, 500, snapshot)
        _say("row visibility gap (PostgreSQL)")
        out["gap"] = durability.row_visibility_gap(scoped, tmp / "gap", plan.gap_reports, converter)
    return out


def outbox_put(tmp: Path, url: str, n: int) -> dict[str, float]:
    from bench.durability import outbox_put_cost

    return outbox_put_cost(tmp, url, n)


# -- running it -----------------------------------------------------------------------------


def postgres_url() -> str | None:
    url = os.environ.get("D6_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1/test")
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception:
        return None
    return url


@dataclass(frozen=True)
class Plan:
    rounds: int = 40
    block: int = 50
    warm: int = 20
    floor_n: int = 2000
    design_reports: int = 200
    gap_reports: int = 100
    writer_records: int = 20_000
    quick: bool = False

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(8, 15, 5, 300, 30, 20, 5_000, True)


def run(plan: Plan, postgres: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), "
        f"Python {platform.python_version()}",
        "postgres": postgres is not None,
    }
    with tempfile.TemporaryDirectory() as name, ExitStack() as stack:
        tmp = Path(name)
        scoped = None
        if postgres is not None:
            from bench.durability import postgres_schema

            scoped = stack.enter_context(postgres_schema(postgres))
        _say("interleaved set-ups")
        harness = Harness(tmp, scoped)
        try:
            results["interleaved"] = harness.run(plan.rounds, plan.block, plan.warm)
            demo = harness.demo_report("tracing_lineage")
            everything = harness.demo_report("tracing_lineage_record_all")
        finally:
            harness.close()
        results["demo_report"] = {
            "span_count": demo["span_count"],
            "span_count_record_all": everything["span_count"],
            "span_recording": demo["span_recording"],
            "snapshot_bytes": len(demo["snapshot"]),
            "span_tree_bytes": len(demo["span_tree"]),
        }
        _say("floor")
        results["floor"] = floor(tmp, demo["snapshot"], demo["span_tree"], plan.floor_n)
        lineage = results["interleaved"]["setups"]["tracing_lineage"]
        total = results["floor"]["total_us"]
        cold = results["floor"]["cold_total_us"]
        cpu = lineage["over_tracing_only"]["cpu_ms"]["mean"] * 1000
        costs = {"report_thread": lineage["hooks_us_per_report"], "all_threads": cpu}
        for label, cost in costs.items():
            results["floor"][f"ratio_{label}"] = round(cost / total, 1)
            results["floor"][f"ratio_{label}_cold"] = round(cost / cold, 1)
        results["outbox_put"] = outbox_put(tmp, harness.url, plan.floor_n)
        _say("growth")
        results["growth"] = growth(tmp, plan.quick, demo["snapshot"])
        if postgres is not None:
            results.update(designs(postgres, tmp, plan, demo["snapshot"]))
    return results


def _ci(p: dict[str, Any], scale: float = 1.0, digits: int = 3) -> str:
    lo, hi = (round(v * scale, digits) for v in p["mean_ci95_t"])
    blo, bhi = (round(v * scale, digits) for v in p["median_ci95_bootstrap"])
    return (
        f"{round(p['median'] * scale, digits)} [{blo}, {bhi}] | "
        f"{round(p['mean'] * scale, digits)} [{lo}, {hi}]"
    )


def markdown(results: dict[str, Any]) -> list[str]:
    """The tables of docs/benchmarks.md's "What tracing and lineage add" section."""
    inter = results["interleaved"]
    demo = results["demo_report"]
    lines = [
        f"## What tracing and lineage add ({results['when']})",
        "",
        f"{results['machine']}. One-page demo report, fast PDF stand-in, SQLAlchemy "
        f"instrumented ({demo['span_count_record_all']} spans, {demo['span_count']} of them "
        f"recorded when unsampled under `report`; {demo['snapshot_bytes']} B snapshot); "
        f"{inter['rounds']} rounds x {inter['block']} reports per set-up, order shuffled per "
        f"round; export ratio {inter['ratio']}.",
        "",
        "| set-up | median ms | p99 ms | CPU ms/report (all threads) | hooks µs/report "
        "| store write µs/record | writer thread µs/record |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in inter["setups"].items():
        lines.append(
            f"| {name} | {s['median_ms']} | {s['p99_ms']} | {s['cpu_ms_per_report']} | "
            f"{s.get('hooks_us_per_report', '')} | {s.get('writer_cpu_us_per_record', '')} | "
            f"{s.get('writer_thread_us_per_record', '')} |"
        )
    lines += [
        "",
        "Paired per round against tracing only (ms; median [95% bootstrap CI] | mean [95% t CI]):",
        "",
        "| set-up | wall: median | wall: mean | CPU: median | CPU: mean | p99 minus | p99 ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in inter["setups"].items():
        d = s.get("over_tracing_only")
        if d is None:
            continue
        lines.append(
            f"| {name} | {_ci(d['wall_ms'])} | {_ci(d['cpu_ms'])} | {d['p99_ms']} "
            f"| {d['p99_ratio']} |"
        )
    parts = inter["decomposition"]
    lines += [
        "",
        "Lineage over tracing only, in two parts (paired per round; ms, median [95% bootstrap "
        "CI] | mean [95% t CI]): the SDK recording the report's own spans "
        "(`record_report_spans` over tracing only), and lineage's processor, outbox and writer "
        "(each lineage set-up over `record_report_spans`):",
        "",
        "| part | wall: median | wall: mean | CPU: median | CPU: mean |",
        "|---|---|---|---|---|",
        *(f"| {name} | {_ci(d['wall_ms'])} | {_ci(d['cpu_ms'])} |" for name, d in parts.items()),
    ]
    g = results["growth"]
    snap = g["snapshot"]
    lines += [
        "",
        "Growth (synthetic unsampled report traces, real sampler/processor/outbox/writer, SQLite):",
        "",
        "| snapshot KB | report thread µs | all threads µs (over tracing only) |",
        "|---|---|---|",
        *(
            f"| {p['kb']} | {p['report_thread_us']} | {p['all_threads_us']} |"
            for p in snap["points"]
        ),
        "",
        f"- per KB: report thread {snap['report_thread_us_per_kb']['slope']} µs "
        f"(intercept {snap['report_thread_us_per_kb']['intercept']}), all threads "
        f"{snap['all_threads_us_per_kb']['slope']} µs "
        f"(intercept {snap['all_threads_us_per_kb']['intercept']}); up to 1 MB only: "
        f"{snap['report_thread_us_per_kb_to_1mb']['slope']} and "
        f"{snap['all_threads_us_per_kb_to_1mb']['slope']} µs",
    ]
    for label, curve in g["spans"].items():
        lines.append(
            f"- per extra span, {label}: report thread "
            f"{curve['report_thread_us_per_span']['slope']} µs, all threads "
            f"{curve['all_threads_us_per_span']['slope']} µs over tracing only "
            f"({curve['over_sampler_only_us_per_span']['slope']} µs over the sampler alone); "
            f"intercepts {curve['report_thread_us_per_span']['intercept']} / "
            f"{curve['all_threads_us_per_span']['intercept']} µs"
        )
    f = results["floor"]
    lines += [
        "",
        f"Floor for this report ({f['snapshot_bytes']} B snapshot, {f['span_tree_bytes']} B span "
        f"tree): sha256 {f['sha256_snapshot_us']} + zstd {f['zstd_snapshot_us']} + orjson "
        f"{f['orjson_span_tree_us']} + zstd {f['zstd_span_tree_us']} + SQLite insert "
        f"{f['sqlite_insert_us']} = {f['total_us']} µs hot, {f['cold_total_us']} µs cold (after "
        f"cache-evicting work); lineage on the report thread is {f['ratio_report_thread']}x / "
        f"{f['ratio_report_thread_cold']}x that, on all threads {f['ratio_all_threads']}x / "
        f"{f['ratio_all_threads_cold']}x.",
    ]
    put = results["outbox_put"]
    lines.append(f"Outbox insert alone: median {put['median_us']} µs, p99 {put['p99_us']} µs.")
    if "designs" in results:
        lines += [
            "",
            "| design (PostgreSQL, report thread) | median ms | p95 ms | p99 ms |",
            "|---|---|---|---|",
            *(
                f"| {k} | {v['median']} | {v['p95']} | {v['p99']} |"
                for k, v in results["designs"].items()
            ),
        ]
        w, gap = results["writer"], results["gap"]
        lines += [
            "",
            f"Writer into PostgreSQL: {w['rows_per_s']} rows/s ({w['records']} records of "
            f"{w['record_bytes']} B, batches of {w['batch']}). Row visible after "
            f"generate_report returned: p50 {gap['p50_s'] * 1000:.0f} ms, p99 "
            f"{gap['p99_s'] * 1000:.0f} ms, max {gap['max_s'] * 1000:.0f} ms ({gap['n']} reports).",
        ]
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 40)")
    parser.add_argument("--block", type=int, help="reports per set-up per round (default 50)")
    parser.add_argument("--quick", action="store_true", help="a small run to check the harness")
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args(argv)
    plan = Plan.quick_plan() if args.quick else Plan()
    if args.rounds or args.block:
        plan = Plan(
            **{
                **plan.__dict__,
                "rounds": args.rounds or plan.rounds,
                "block": args.block or plan.block,
            }
        )
    postgres = None if args.skip_postgres else postgres_url()
    if postgres is None and not args.skip_postgres:
        _say("PostgreSQL unreachable: SQLite only")
    results = run(plan, postgres)
    command = "python -m bench.overhead" + ("" if argv is None else " " + " ".join(argv))
    if argv is None:
        command = "python -m bench.overhead " + " ".join(sys.argv[1:])
    results["command"] = command.strip()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(results, indent=2) + "\n")
    text = "\n".join([f"`{results['command']}`", "", *markdown(results)]) + "\n"
    (RESULTS / "overhead.md").write_text(text)
    print(text)
    return results


def _say(message: str) -> None:
    print(f"bench.overhead: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
