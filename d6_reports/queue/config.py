"""The task queue's settings, from the environment, checked once at start.

A worker or an enqueuing command that starts with a broker URL it cannot use, or a retry policy
that cannot ride out a database restart, fails later and far less clearly (a worker retrying a
typo forever, a report dropped after its first connection error). So every value is parsed and
range-checked here and a bad one is a ``QueueConfigError`` naming the variable and what it
accepts, in one line. Broker URLs are never shown with their password.

==============================  ====================================  ==========================
variable                        meaning                               default
==============================  ====================================  ==========================
``D6_BROKER_URL``               the broker (``amqp://``, ``redis://``) ``amqp://guest:guest@
                                                                      127.0.0.1:5672//``
``D6_RESULT_BACKEND``           Celery result backend (optional:      none
                                status comes from the database)
``D6_QUEUE``                    queue name                            ``d6-reports``
``D6_TASK_TIME_LIMIT``          seconds before a task's worker        900
                                process is killed
``D6_TASK_MAX_RETRIES``         retries of a report whose database    10
                                was unreachable
``D6_TASK_RETRY_DELAY``         first retry delay (doubles per retry) 2
``D6_TASK_RETRY_DELAY_MAX``     longest retry delay                   60
``D6_BROKER_CONNECT_TIMEOUT``   seconds per broker connection attempt 4
``D6_BROKER_STARTUP_WAIT``      seconds a worker waits for the broker 30
                                at start
==============================  ====================================  ==========================
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_QUEUE = "d6-reports"
#: The hard limit kills a task's worker process; the generator's own PDF limit (300 s) fails a
#: report cleanly long before, so this only catches a process that is truly stuck.
DEFAULT_TIME_LIMIT_S = 900.0
#: 2 + 4 + 8 + 16 + 32 + 60 * 5 s: a report keeps retrying for about seven minutes, well past a
#: database restart or a 30 s network cut, and then gives up (its row says why).
DEFAULT_MAX_RETRIES = 10
DEFAULT_RETRY_DELAY_S = 2.0
DEFAULT_RETRY_DELAY_MAX_S = 60.0
DEFAULT_CONNECT_TIMEOUT_S = 4.0
DEFAULT_STARTUP_WAIT_S = 30.0
#: URL schemes of the transports this service supports (py-amqp for RabbitMQ, redis-py).
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
REDIS_SCHEMES = frozenset({"redis", "rediss"})
#: Result backends: the database (SQLAlchemy URL prefixed ``db+``), Redis, or RPC over AMQP.
_BACKEND_SCHEMES = frozenset({"redis", "rediss", "rpc"})
#: A queue (and routing key) name: printable, no spaces, short.
#: What a number setting may look like: ASCII digits, an optional sign, point and exponent.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
_N = TypeVar("_N", int, float)


class QueueConfigError(ValueError):
    """A task queue setting this service cannot use; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """Resolved settings of the task queue (see the module docstring for each variable)."""

    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str | None = None
    queue: str = DEFAULT_QUEUE
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_delay_s: float = DEFAULT_RETRY_DELAY_S
    retry_delay_max_s: float = DEFAULT_RETRY_DELAY_MAX_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    startup_wait_s: float = DEFAULT_STARTUP_WAIT_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> QueueSettings:
        """Read and check every variable; raises ``QueueConfigError`` on the first bad one."""
        env = os.environ if environ is None else environ
        delay = _number(env, "D6_TASK_RETRY_DELAY", float, DEFAULT_RETRY_DELAY_S, 0.1, 3600.0)
        delay_max = _number(
            env, "D6_TASK_RETRY_DELAY_MAX", float, DEFAULT_RETRY_DELAY_MAX_S, 0.1, 86_400.0
        )
        if delay_max < delay:
            raise QueueConfigError(
                f"D6_TASK_RETRY_DELAY_MAX={delay_max:g} is below D6_TASK_RETRY_DELAY={delay:g}: "
                "the longest retry delay must be at least the first"
            )
        return cls(
            broker_url=_broker_url(env),
            result_backend=_result_backend(env),
            queue=_queue(env),
            time_limit_s=_number(
                env, "D6_TASK_TIME_LIMIT", float, DEFAULT_TIME_LIMIT_S, 10.0, 86_400.0
            ),
            max_retries=_number(env, "D6_TASK_MAX_RETRIES", int, DEFAULT_MAX_RETRIES, 0, 1000),
            retry_delay_s=delay,
            retry_delay_max_s=delay_max,
            connect_timeout_s=_number(
                env, "D6_BROKER_CONNECT_TIMEOUT", float, DEFAULT_CONNECT_TIMEOUT_S, 0.1, 300.0
            ),
            startup_wait_s=_number(
                env, "D6_BROKER_STARTUP_WAIT", float, DEFAULT_STARTUP_WAIT_S, 0.0, 3600.0
            ),
        )

    @property
    def transport(self) -> str:
        """``amqp`` or ``redis``: the transport family of ``broker_url``."""
        return "redis" if urlsplit(self.broker_url).scheme.lower() in REDIS_SCHEMES else "amqp"

    @property
    def safe_broker_url(self) -> str:
        """``broker_url`` as it may be printed: the password replaced by ``***``."""
        return safe_url(self.broker_url)

    def retry_delay(self, retries: int) -> float:
        """Seconds before retry number ``retries + 1``: doubling from the first delay, capped."""
        if retries < 0:
            raise ValueError("retries must not be negative")
        # min() before the power: 2.0**retries overflows a float past about 1000 retries.
        return min(self.retry_delay_s * 2.0 ** min(retries, 64), self.retry_delay_max_s)


def safe_url(url: str) -> str:
    """A URL without its password (``user:***@host``), for messages and logs; every URL of a
    ``;`` or ``,`` separated list (kombu's failover syntax) masked."""
    if ";" in url or "," in url:
        return ";".join(safe_url(part) for part in re.split(r"[;,]", url))
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if not password:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _broker_url(env: Mapping[str, str]) -> str:
    raw = env.get("D6_BROKER_URL")
    if raw is None or not raw.strip():
        return DEFAULT_BROKER_URL
    value = raw.strip()
    expected = "expected amqp://user:password@host:5672/vhost or redis://host:6379/0"
    if not _printable(value):
        raise QueueConfigError(f"D6_BROKER_URL is not valid: {expected}")
    if ";" in value or "," in value:
        raise QueueConfigError(
            "D6_BROKER_URL names several brokers (a failover list): name one; "
            f"{expected} (the list was {safe_url(value)[:200]!r})"
        )
    try:
        parts = urlsplit(value)
        port = parts.port  # a non-numeric or out-of-range port raises here
    except ValueError:
        raise QueueConfigError(
            f"D6_BROKER_URL={safe_url(value)!r} is not valid (bad port): {expected}"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in AMQP_SCHEMES | REDIS_SCHEMES:
        shown = f"{scheme!r}" if scheme else "no scheme"
        raise QueueConfigError(
            f"D6_BROKER_URL has {shown[:40]}: not a supported broker transport; {expected}"
        )
    if not parts.hostname:
        raise QueueConfigError(f"D6_BROKER_URL={safe_url(value)!r} names no host: {expected}")
    if port == 0:
        raise QueueConfigError(f"D6_BROKER_URL={safe_url(value)!r} has port 0: {expected}")
    if scheme in REDIS_SCHEMES and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise QueueConfigError(
            f"D6_BROKER_URL={safe_url(value)!r}: a Redis database is a number (redis://host/0)"
        )
    return value


def _result_backend(env: Mapping[str, str]) -> str | None:
    raw = env.get("D6_RESULT_BACKEND")
    if raw is None or not raw.strip():
        return None
    value = raw.strip()
    expected = "expected redis://host:6379/1, rpc:// or db+postgresql+psycopg://..."
    if not _printable(value):
        raise QueueConfigError(f"D6_RESULT_BACKEND is not valid: {expected}")
    try:
        scheme = urlsplit(value).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme not in _BACKEND_SCHEMES and not scheme.startswith("db+"):
        raise QueueConfigError(
            f"D6_RESULT_BACKEND={safe_url(value)[:60]!r} is not a supported result backend: "
            f"{expected}"
        )
    if scheme.startswith("db+"):
        try:  # the database and its driver, checked now rather than at the first result
            make_url(value[3:]).get_dialect().import_dbapi()
        except Exception as exc:
            raise QueueConfigError(
                f"D6_RESULT_BACKEND={safe_url(value)[:60]!r} cannot be used: "
                f"{type(exc).__name__} ({str(exc).splitlines()[0][:120] if str(exc) else ''})"
            ) from None
    return value


def check_queue_name(name: str, *, what: str = "a queue name") -> str:
    """``name`` if it is a usable queue name, else ``QueueConfigError`` naming ``what``."""
    if name.lower().startswith("amq."):
        raise QueueConfigError(
            f"{what}={_shown(name)} is not valid: names starting with 'amq.' are reserved by "
            "RabbitMQ"
        )
    if not _QUEUE_NAME.fullmatch(name):
        raise QueueConfigError(
            f"{what}={_shown(name)} is not valid: expected 1 to 200 letters, digits, '.', "
            "'_', ':' or '-', starting with a letter or digit"
        )
    return name


def _queue(env: Mapping[str, str]) -> str:
    raw = env.get("D6_QUEUE")
    if raw is None or not raw.strip():
        return DEFAULT_QUEUE
    return check_queue_name(raw.strip(), what="D6_QUEUE")


def _number(
    env: Mapping[str, str],
    name: str,
    kind: Callable[[str], _N],
    default: _N,
    low: _N,
    high: _N,
) -> _N:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    noun = "an integer" if kind is int else "a number"
    expected = f"expected {noun} from {low:g} to {high:g}"
    try:
        if not _PLAIN_NUMBER.fullmatch(raw.strip()):  # int() takes '1_0', other digits
            raise ValueError(raw)
        value = kind(raw.strip())
    except ValueError:
        raise QueueConfigError(f"{name}={_shown(raw)} is not valid: {expected}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise QueueConfigError(f"{name}={_shown(raw)} is not valid: {expected}")
    if not low <= value <= high:
        raise QueueConfigError(f"{name}={_shown(raw)} is out of range: {expected}")
    return value


def _printable(value: str) -> bool:
    """False for control characters and text holding undecodable bytes (surrogates)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return value.isprintable() and " " not in value


def _shown(raw: str) -> str:
    text = repr(raw)
    return text if len(text) <= 40 else f"{text[:37]}..."
