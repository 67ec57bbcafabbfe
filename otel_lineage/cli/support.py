"""What every ``otel-lineage`` command shares: one-line errors, safe text, safe output files.

A command line that prints a traceback for a typo, or lets a business name such as ``[/]``
crash its table rendering, is a command line operators stop trusting. So the application group
turns every expected failure (bad option, unreadable file, database missing, unmigrated or
silent) into one ``error: ...`` line on stderr and an exit status (2: bad usage or
configuration; 1: the answer is no), and every displayed value goes through ``text()`` (never
parsed as Rich markup).
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.text import Text
from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from typer.core import TyperGroup

from otel_lineage.delivery.engines import (
    UPGRADE_HINT,
    MissingDatabaseError,
    create_lineage_engine,
    sqlite_path,
)
from otel_lineage.settings import LineageConfigError

#: Bad usage or configuration (the convention of Click's usage errors too).
USAGE = 2
#: Longest report id (a UUID) and template name/version a command accepts.
MAX_ID = 36
MAX_NAME = 200


class CliError(Exception):
    """An expected failure: ``message`` is the one line shown after ``error:``."""

    def __init__(self, message: str, exit_code: int = USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


#: Control characters (but tab and newline), DEL and C1: a file name or a stored value holding
#: them could drive the user's terminal (retitle it, clear it), so they are shown as escapes.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(value: str) -> str:
    """``value`` with every terminal control character shown as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def one_line(message: object) -> str:
    """``message`` on one line (a multi-line database error would break the contract)."""
    return visible(" ".join(str(message).split()))


def fail(message: str, exit_code: int = USAGE) -> None:
    """Print ``error: message`` to stderr and exit with ``exit_code``."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()
    raise SystemExit(exit_code)


def text(value: object) -> Text:
    """A displayed value, never interpreted as Rich markup."""
    return Text("-" if value is None else visible(str(value)))


def esc(value: object) -> str:
    """A value to interpolate into a Rich markup string."""
    return escape(str(value))


class OneLineErrors(TyperGroup):
    """The application group: runs the command, turns whatever it raised into one line."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Exit as exc:
            code = exc.exit_code
        except typer.Abort:
            fail("aborted", 1)
        except CliError as exc:
            fail(exc.message, exc.exit_code)
        except typer.TyperException as exc:  # usage errors: bad option values, no command...
            if type(exc).__name__ == "NoArgsIsHelpError":
                sys.stderr.write(exc.format_message() + "\n")
                raise SystemExit(USAGE) from None
            fail(exc.format_message(), exc.exit_code)
        except Exception as exc:
            known = describe_common(exc)
            fail(known.message, known.exit_code)
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            raise SystemExit(code)
        return code


def describe_common(exc: BaseException) -> CliError:
    """The one line for failures every command can meet."""
    if isinstance(exc, MissingDatabaseError | LineageConfigError):
        return CliError(str(exc))
    if isinstance(exc, ArgumentError):
        return CliError(f"not a database URL: {exc}")
    if isinstance(exc, SQLAlchemyError):
        return describe_database_error(exc)
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return CliError(f"{exc.strerror or type(exc).__name__}{where}", 1)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return CliError(f"unexpected {type(exc).__name__}: {first}", 1)


def label_engine(engine: Engine, label: str, deadline_s: float) -> Engine:
    """Tag the errors of ``engine`` with which database it is and its deadline."""

    @event.listens_for(engine, "handle_error")
    def _tag(context: ExceptionContext) -> None:
        if context.sqlalchemy_exception is not None:
            context.sqlalchemy_exception.cli_database = (label, deadline_s)  # type: ignore[attr-defined]

    return engine


def describe_database_error(exc: SQLAlchemyError) -> CliError:
    """Missing tables, deadlines and the rest, named without the statement or its values."""
    label, deadline = getattr(exc, "cli_database", ("lineage", None))
    orig = getattr(exc, "orig", None) or exc.__cause__ or exc
    message = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    sqlstate = getattr(orig, "sqlstate", None)
    lowered = message.lower()
    if sqlstate in ("42P01", "42703") or "no such table" in lowered or "no such column" in lowered:
        return CliError(f"the {label} database is not migrated ({message}); {UPGRADE_HINT}")
    if sqlstate == "57014" or "timeout expired" in lowered or "database is locked" in lowered:
        within = f" within {deadline:g} s" if deadline else ""
        return CliError(f"the {label} database did not answer{within}")
    return CliError(f"the {label} database failed: {type(orig).__name__}: {message}")


def check_text(value: str | None, what: str, max_length: int = MAX_NAME) -> str | None:
    """A text option or argument: valid UTF-8 (argv can carry any bytes) and bounded."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CliError(f"{what} is not valid UTF-8") from None
    if len(value) > max_length:
        raise CliError(f"{what} is longer than {max_length} characters")
    if not value.isprintable():
        raise CliError(f"{what} contains control characters")
    return value


def write_output(path: Path, data: bytes, *, force: bool) -> None:
    """Write ``data`` to ``path``; an existing file only with ``force``, a directory never."""
    if path.is_dir():
        raise CliError(f"{path} is a directory")
    if not path.parent.is_dir():
        raise CliError(f"directory {path.parent} does not exist")
    if path.exists() and not force:
        raise CliError(f"{path} exists; use --force to overwrite it")
    try:
        with open(path, "wb" if force else "xb") as out:
            out.write(data)
            out.flush()
            if stat.S_ISREG(os.fstat(out.fileno()).st_mode):
                os.fsync(out.fileno())
    except FileExistsError:
        raise CliError(f"{path} exists; use --force to overwrite it") from None
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}", 1) from None


def parse_time(value: str | None, option: str) -> datetime | None:
    """``--since``/``--until``: ISO 8601; naive means UTC; an instant that exists in UTC."""
    if value is None:
        return None
    check_text(value, option, 64)
    try:
        parsed = datetime.fromisoformat(value)
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        parsed.astimezone(UTC)  # 0001-01-01T00:00+01:00 has no UTC instant
    except ValueError:
        raise CliError(f"{option}: not an ISO 8601 time: {value!r}") from None
    except OverflowError:
        raise CliError(f"{option}: out of range: {value!r}") from None
    return parsed


def cli_engine(url: str, label: str, *, write: bool, timeout_s: float) -> Engine:
    """An engine for a command: never creates a database file, always has deadlines."""
    path = sqlite_path(url)
    if write and path is not None and not path.is_file():
        raise MissingDatabaseError(f"no database at {path}; {UPGRADE_HINT}")
    engine = create_lineage_engine(
        url, connect_timeout_s=timeout_s, statement_timeout_s=timeout_s, read_only=not write
    )
    return label_engine(engine, label, timeout_s)
