"""``otel-lineage``: the command line over ``reading`` and ``delivery`` (see ``app``)."""

from otel_lineage.cli.app import app

__all__ = ["app"]
