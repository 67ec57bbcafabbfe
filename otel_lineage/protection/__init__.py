"""Protected input snapshots: stored once per business and content, encrypted at rest.

``keys``: the master key file (``OTEL_LINEAGE_SNAPSHOT_KEY_FILE``), one data key per business
wrapped by a master key, rotation. ``snapshots``: storing a record's snapshot (dedup, compress
then encrypt), reading one back, and erasing a business (``forget``: crypto-shredding).

The writer thread calls ``snapshots`` (never the report thread: the report only folds and hands
off), and the readers (``inputs``, ``verify``, the web service) call it through
``reading.query`` and ``reading.verify``.
"""
