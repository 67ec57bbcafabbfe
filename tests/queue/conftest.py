"""Fixtures of the queue tests: the broker, a PostgreSQL database per module, a cluster per test.

They need a real broker (``D6_TEST_BROKER_URL``, default the local RabbitMQ; Redis at
``D6_TEST_REDIS_URL`` for the Redis runs) and PostgreSQL (``D6_TEST_POSTGRES_URL``). Without
them the tests skip, unless ``D6_TEST_REQUIRE_BROKER=1`` or ``D6_TEST_REQUIRE_POSTGRES=1`` (CI)
says they must run: then a missing service fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from tests.queue.harness import (
    DEFAULT_BROKER_URL,
    DEFAULT_REDIS_URL,
    Cluster,
    QueueDatabase,
    broker_reachable,
    postgres_database,
)

#: Businesses seeded once per module: the 200-report runs use all of them.
BUSINESSES = 200


def _required() -> bool:
    return "1" in (
        os.environ.get("D6_TEST_REQUIRE_BROKER"),
        os.environ.get("D6_TEST_REQUIRE_POSTGRES"),
    )


def _unavailable(reason: str) -> None:
    if _required():
        pytest.fail(f"{reason} (D6_TEST_REQUIRE_BROKER/D6_TEST_REQUIRE_POSTGRES is set)")
    pytest.skip(reason)


def _broker(variable: str, default: str) -> str:
    url = os.environ.get(variable) or default
    problem = broker_reachable(url)
    if problem is not None:
        _unavailable(f"broker unreachable ({variable}): {problem}")
    return url


@pytest.fixture(scope="session")
def broker_url() -> str:
    """RabbitMQ: ``D6_TEST_BROKER_URL``, default the local one."""
    return _broker("D6_TEST_BROKER_URL", DEFAULT_BROKER_URL)


@pytest.fixture(scope="session")
def redis_broker_url() -> str:
    """Redis as the broker: ``D6_TEST_REDIS_URL``, default the local server's database 15."""
    return _broker("D6_TEST_REDIS_URL", DEFAULT_REDIS_URL)


@pytest.fixture(scope="module")
def queue_db(broker_url: str) -> Iterator[QueueDatabase]:
    pg = os.environ.get("D6_TEST_POSTGRES_URL")
    if not pg:
        _unavailable("D6_TEST_POSTGRES_URL not set")
        raise AssertionError("unreachable")
    probe = create_engine(pg, connect_args={"connect_timeout": 5})
    try:
        with probe.connect():
            pass
    except Exception as exc:
        _unavailable(f"PostgreSQL unreachable at {pg}: {type(exc).__name__}")
    finally:
        probe.dispose()
    with postgres_database(pg, BUSINESSES) as database:
        yield database


def _cluster(database: QueueDatabase, broker: str, workdir: Path) -> Iterator[Cluster]:
    """Empty report/lineage tables, a queue of the test's own, nodes killed at the end."""
    database.truncate()
    cluster = Cluster(
        database=database,
        broker_url=broker,
        queue=f"d6-test-{uuid.uuid4().hex[:10]}",
        workdir=workdir,
    )
    try:
        yield cluster
    finally:
        cluster.teardown()


@pytest.fixture
def cluster(queue_db: QueueDatabase, broker_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """Worker nodes on RabbitMQ."""
    yield from _cluster(queue_db, broker_url, tmp_path)


@pytest.fixture(params=["rabbitmq", "redis"])
def any_broker_cluster(
    request: pytest.FixtureRequest, queue_db: QueueDatabase, tmp_path: Path
) -> Iterator[Cluster]:
    """Worker nodes on RabbitMQ, then on Redis (no acknowledgements: kombu emulates them)."""
    broker = request.getfixturevalue(
        "broker_url" if request.param == "rabbitmq" else "redis_broker_url"
    )
    yield from _cluster(queue_db, broker, tmp_path)
