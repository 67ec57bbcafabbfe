"""Configuration from the environment, read once per process.

Every knob has a default that works on a fresh machine (an SQLite file under ``./var``), so the
service runs with no set-up; production overrides them with environment variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VAR_DIR = Path("var")


@dataclass(frozen=True, slots=True)
class Settings:
    """Resolved settings of the report service."""

    database_url: str
    reports_dir: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        var_dir = DEFAULT_VAR_DIR.resolve()
        url = env.get("D6_DATABASE_URL") or f"sqlite:///{var_dir / 'd6_reports.db'}"
        reports = Path(env.get("D6_REPORTS_DIR") or var_dir / "reports")
        return cls(database_url=url, reports_dir=reports)
