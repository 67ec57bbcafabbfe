"""Delivery: getting each folded record into the lineage database, whatever happens.

The durable hand-off (a per-process SQLite outbox, with quarantine and open-report markers),
the background writer, the idempotent store and its schema, the engines with deadlines, the
counters, recovery of what dead processes left. Knows records, never spans: it imports nothing
from ``capture``.
"""
