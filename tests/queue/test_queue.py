"""Reports on a real task queue (issue 11): RabbitMQ (the SIGKILL run on Redis too), PostgreSQL,
Celery worker processes.

Each worker node is its own process group standing for one host (node name, outbox directory),
prefork pool of 2. Nothing here is eager mode or a mock broker. The PDF step is the fast pydyf
stand-in except in the WeasyPrint run; spans, the fold, the outbox, the broker and the database
are the real ones. Faults are real too: SIGKILL to a pool child mid-report, the broker's and the
database's TCP connections cut through a proxy.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.queue.harness import BIN, Cluster, otlp_root_spans, wait_until
from tests.queue.worker_main import DELAY_ENV, STALL_MARKER_ENV

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

ROOT_SPAN = "report.generate"


# -- what every scenario checks -----------------------------------------------------------------


def assert_each_completed_once(cluster: Cluster, count: int) -> dict[str, list[dict[str, Any]]]:
    """``count`` generations, all completed, each with exactly one completed lineage row: the
    row of the attempt the generation names (its trace), complete. Every other lineage row of a
    generation is a failed earlier attempt. Returns the lineage rows by generation id."""
    rows = cluster.database.generations()
    assert len(rows) == count, cluster.details()
    assert {r["status"] for r in rows} == {"completed"}, cluster.details()
    lineage: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in cluster.database.lineage():
        lineage[row["report_generation_id"]].append(row)
    assert set(lineage) == {r["id"] for r in rows}, "lineage rows of unknown generations"
    for generation in rows:
        attempts = lineage[generation["id"]]
        (done,) = [a for a in attempts if a["status"] == "completed"]
        assert done["trace_id"] == generation["trace_id"], "lineage of another attempt"
        assert done["complete"], done["incomplete_reasons"]
        assert done["attempt"] == generation["attempts"] >= 1
        assert done["output_sha256"] == generation["pdf_sha256"]
        for other in attempts:
            if other is not done:  # an earlier attempt (an abandoned one may lack its number)
                assert other["status"] == "failed" and other["trace_id"] != done["trace_id"]
                assert other["attempt"] is None or other["attempt"] < done["attempt"]
    return lineage


def assert_audit_full(cluster: Cluster, count: int, host: str = "host1") -> dict[str, Any]:
    report = cluster.audit(host)
    assert report["exit_code"] == 0, report
    assert report["capture_rate"] == 1.0
    assert (report["generations"], report["with_lineage"]) == (count, count)
    assert report["missing_total"] == 0 and report["in_flight"] == 0
    assert report["incomplete_total"] == 0
    assert report["counters"]["dropped"] == 0 and report["counters"]["evicted"] == 0
    return report


# -- volume ----------------------------------------------------------------------------------------


def test_200_reports_on_two_hosts_each_get_one_lineage_row(cluster: Cluster) -> None:
    nodes = cluster.start(2, concurrency=2)
    cluster.enqueue_all()
    pending = cluster.database.generations()
    assert len(pending) == 200  # the rows exist as soon as enqueue returns
    cluster.wait_completed(200, timeout=180)
    cluster.stop_all()

    lineage = assert_each_completed_once(cluster, 200)
    assert sum(len(rows) for rows in lineage.values()) == 200  # no failed attempt in a calm run
    assert {r["attempts"] for r in cluster.database.generations()} == {1}
    assert all(node.succeeded() > 0 for node in nodes), "one host did all the work"
    assert sum(node.succeeded() for node in nodes) == 200
    report = assert_audit_full(cluster, 200)
    assert report["processes"] >= 4  # every pool child of both hosts wrote its counters


def test_a_child_per_task_still_gives_200_lineage_rows(
    cluster: Cluster, otlp_receiver: tuple[str, list[bytes]]
) -> None:
    """``--max-tasks-per-child 1``: every pool child is recycled after one report. Host 1 runs
    the worker as shipped (a recycled child flushes its tracer provider); host 2's children exit
    the way a stock Celery child does, flushing nothing. Lineage is 200/200 either way. The same
    spans also go to a real local OTLP receiver through the SDK's stock ``BatchSpanProcessor``:
    how many report roots it got, per host, is the side-by-side figure (printed, not asserted)."""
    endpoint, bodies = otlp_receiver
    export = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "lineage_parentbased_always_on",  # export every report
    }
    (shipped,) = cluster.start(
        1, max_tasks_per_child=1, extra={**export, "OTEL_SERVICE_NAME": "worker-as-shipped"}
    )
    (stock,) = cluster.start(
        1,
        max_tasks_per_child=1,
        exit_without_flush=True,
        extra={**export, "OTEL_SERVICE_NAME": "worker-exit-without-flush"},
    )
    cluster.enqueue_all(extra=export)
    children: set[int] = set()

    def all_completed() -> bool:
        for node in (shipped, stock):
            children.update(node.children())
        return cluster.database.completed() >= 200

    wait_until(all_completed, timeout=240, what="200 completed reports", details=cluster.details)
    cluster.stop_all()  # each parent adopts, at stop, what its children left in their outboxes

    assert len(children) > 4, "pool children were not recycled"
    assert shipped.succeeded() > 0 and stock.succeeded() > 0, "one host did all the work"
    lineage = assert_each_completed_once(cluster, 200)
    assert sum(len(rows) for rows in lineage.values()) == 200
    assert_audit_full(cluster, 200)
    roots = otlp_root_spans(bodies, ROOT_SPAN)
    print(
        f"\nmax-tasks-per-child=1, 200 reports, lineage 200/200 ({len(children)} pool children "
        f"seen); '{ROOT_SPAN}' root spans the stock BatchSpanProcessor delivered over OTLP: "
        f"host 1 (as shipped) {roots.get('worker-as-shipped', 0)}/{shipped.succeeded()}, "
        f"host 2 (children exit without flushing) "
        f"{roots.get('worker-exit-without-flush', 0)}/{stock.succeeded()}"
    )


# -- faults ----------------------------------------------------------------------------------------


def test_sigkill_mid_report_redelivers_and_completes_once(
    any_broker_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = any_broker_cluster
    marker = tmp_path / "stalled-child.pid"
    (node,) = cluster.start(1, concurrency=2, extra={STALL_MARKER_ENV: str(marker)})
    ids = cluster.enqueue(cluster.database.business_ids[:6])
    wait_until(marker.exists, timeout=60, what="a report stalled in its PDF step")
    victim = int(marker.read_text())
    assert victim in node.children(), "the stalled report is not in a pool child of the node"
    os.kill(victim, signal.SIGKILL)

    cluster.wait_completed(6, timeout=120)
    (killed,) = [g for g in cluster.database.generations() if g["attempts"] != 1]
    assert killed["attempts"] == 2, "redelivered once, claimed twice"
    assert killed["id"] in ids

    # While the node still runs, a new process adopts what the dead child left behind.
    flushed = cluster.outbox_flush("host1")
    assert "adopted" in flushed.stdout
    status = cluster.run([str(BIN / "otel-lineage"), "outbox", "status", "--json"], host="host1")
    assert [f for f in orjson.loads(status.stdout)["files"] if not f["owner_alive"]] == []
    cluster.stop_all()

    lineage = assert_each_completed_once(cluster, 6)
    (done,) = [r for r in lineage[killed["id"]] if r["status"] == "completed"]
    (dead,) = [r for r in lineage[killed["id"]] if r is not done]  # the killed attempt
    assert (dead["status"], dead["error_type"]) == ("failed", "abandoned")
    assert dead["incomplete_reasons"] == ["process_died_before_report_ended"]
    assert done["attempt"] == 2 and done["trace_id"] == killed["trace_id"]
    others = [rows for gid, rows in lineage.items() if gid != killed["id"]]
    assert all(len(rows) == 1 and rows[0]["attempt"] == 1 for rows in others)
    assert_audit_full(cluster, 6)
    assert dead["attempt"] == 1, "the killed attempt's lineage row does not say which attempt"


def test_broker_connection_cut_while_tasks_are_queued(cluster: Cluster) -> None:
    proxy, broker = cluster.proxy(cluster.broker_url, 5672)
    nodes = cluster.start(2, concurrency=2, broker_url=broker, extra={DELAY_ENV: "0.15"})
    count = 40
    cluster.enqueue(cluster.database.business_ids[:count])  # straight to the broker
    wait_until(
        lambda: cluster.database.completed() >= 6,
        timeout=60,
        what="the first reports",
        details=cluster.details,
    )
    proxy.stop()  # every worker's broker connection reset, and no new one accepted
    queued = cluster.database.status_counts().get("pending", 0)
    assert queued > 0, "nothing was queued any more when the connection was cut"
    wait_until(
        lambda: all("Connection to broker lost" in n.log() for n in nodes),
        timeout=30,
        what="both workers to notice the lost broker",
        details=cluster.logs,
    )
    proxy.start()

    cluster.wait_completed(count, timeout=150)
    cluster.stop_all()
    lineage = assert_each_completed_once(cluster, count)
    assert sum(r["status"] == "completed" for rows in lineage.values() for r in rows) == count
    # The messages the workers held unacknowledged at the cut came back: each one either found
    # its report finished (nothing run) or claimed it again; neither left a second row.
    ran = sum(n.succeeded() for n in nodes)  # task executions, redelivered ones included
    reclaimed = sum(g["attempts"] > 1 for g in cluster.database.generations())
    assert ran > count or reclaimed > 0, "no message was redelivered: the cut tested nothing"
    assert_audit_full(cluster, count)


def test_postgres_unreachable_for_30_s_then_every_lineage_arrives(cluster: Cluster) -> None:
    proxy, database = cluster.proxy(cluster.database.url, 5432)
    nodes = cluster.start(2, concurrency=2, database_url=database, extra={DELAY_ENV: "0.1"})
    count = 40
    cluster.enqueue(cluster.database.business_ids[:count])  # the client reaches the database
    wait_until(
        lambda: cluster.database.completed() >= 5,
        timeout=60,
        what="the first reports",
        details=cluster.details,
    )
    proxy.stop()  # the workers' connections reset; new ones refused
    assert cluster.database.completed() < count, "the run was over before the outage"
    time.sleep(30)  # the outage itself: its length is the scenario
    proxy.start()

    cluster.wait_completed(count, timeout=180)
    cluster.stop_all()
    assert sum(" retry: " in n.log() for n in nodes) > 0, "no task was retried"
    lineage = assert_each_completed_once(cluster, count)
    assert sum(r["status"] == "completed" for rows in lineage.values() for r in rows) == count
    assert_audit_full(cluster, count)


# -- the real PDF step -----------------------------------------------------------------------------


def test_real_weasyprint_through_the_queue(cluster: Cluster) -> None:
    cluster.start(1, concurrency=2, real_pdf=True)
    cluster.enqueue(cluster.database.business_ids[:8])
    cluster.wait_completed(8, timeout=180)
    cluster.stop_all()
    lineage = assert_each_completed_once(cluster, 8)
    pages = []
    for generation in cluster.database.generations():
        data = Path(generation["pdf_path"]).read_bytes()
        assert data.startswith(b"%PDF-")
        assert hashlib.sha256(data).hexdigest() == generation["pdf_sha256"]
        (row,) = lineage[generation["id"]]
        assert row["output_pages"] == generation["pdf_pages"]
        pages.append(generation["pdf_pages"])
    assert max(pages) > 1  # multi-page reports: WeasyPrint's (the stand-in makes one page)
    assert_audit_full(cluster, 8)


def test_unreadable_and_strangers_messages_are_dropped_and_the_worker_goes_on(
    cluster: Cluster,
) -> None:
    """Messages a producer other than ``enqueue`` sent: bodies and headers of the wrong shape
    (which Celery cannot even turn into a request) and a task id that is not the generation
    id. Each is dropped without its contents in the log; the worker never stops."""
    from kombu import Connection

    from d6_reports.queue.app import TASK_NAME

    (node,) = cluster.start(1, concurrency=1)
    secret = "Harbor Dental Care hello@harbordental.example"
    good_id = cluster.enqueue(cluster.database.business_ids[:1])[0]
    with Connection(cluster.broker_url) as connection:
        producer = connection.Producer(serializer="json")
        for body, headers in (
            ({"a": secret}, {}),
            ([1, 2], {}),
            (None, {}),
            ([[], {}, {}], {"timelimit": [secret, "y"]}),
            ([[good_id, 1, "audit_report", None], {}, {}], {"id": secret}),
        ):
            producer.publish(
                body,
                routing_key=cluster.queue,
                headers={"task": TASK_NAME, "id": str(uuid.uuid4()), "lang": "py", **headers},
            )
    after = cluster.enqueue(cluster.database.business_ids[1:2])
    cluster.wait_completed(2, timeout=120)
    assert node.process.poll() is None, node.log_tail()
    log = node.log()
    assert "Unrecoverable error" not in log
    assert secret not in log and "harbordental" not in log
    assert log.count("unreadable report task message dropped") == 5
    statuses = {r["id"]: r["status"] for r in cluster.database.generations()}
    assert statuses[good_id] == statuses[after[0]] == "completed"


def test_retries_spent_while_the_database_is_down_never_strand_a_report(
    cluster: Cluster,
) -> None:
    """The retries run out during an outage: nothing can record the give-up, so the task keeps
    retrying at the longest delay instead of being acknowledged with its row left pending."""
    proxy, database = cluster.proxy(cluster.database.url, 5432)
    extra = {"D6_TASK_MAX_RETRIES": "1", "D6_TASK_RETRY_DELAY": "1", "D6_TASK_RETRY_DELAY_MAX": "2"}
    (node,) = cluster.start(1, concurrency=1, database_url=database, extra=extra)
    proxy.stop()
    (generation_id,) = cluster.enqueue(cluster.database.business_ids[:1])  # the client can
    wait_until(
        lambda: "retries spent, but the database cannot record it" in node.log(),
        timeout=60,
        what="the retries to run out",
        details=node.log_tail,
    )
    proxy.start()
    cluster.wait_completed(1, timeout=60)
    (row,) = cluster.database.generations()
    assert (row["id"], row["status"]) == (generation_id, "completed")
