"""Wiring of the service from settings: engine, sessions, generator.

The CLI and worker processes build everything through here so that a process always talks to
the database named by its settings and nothing is shared across processes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from d6_reports.config import Settings
from d6_reports.db import make_engine, make_session_factory
from d6_reports.generator import ReportGenerator


@dataclass
class ReportService:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    generator: ReportGenerator

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ReportService:
        settings = settings or Settings.from_env()
        engine = make_engine(settings.database_url)
        sessions = make_session_factory(engine)
        generator = ReportGenerator(sessions, settings.reports_dir)
        return cls(settings=settings, engine=engine, sessions=sessions, generator=generator)

    def close(self) -> None:
        self.generator.close()
        self.engine.dispose()
