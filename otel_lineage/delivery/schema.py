"""The plugin's tables, as SQLAlchemy Core (the plugin has no ORM of its own).

``report_lineage`` column names are a public contract: people query them with SQL. The same
definitions are created by the Alembic revisions ``0002`` to ``0006``; a test keeps the two
equal. Every text column that can receive a value from the environment, the resource or span
data is unbounded (``Text``): a long service name must never make a record or the counters row
fail (revision ``0005``).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()
TS = DateTime(timezone=True)

report_lineage = Table(
    "report_lineage",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    # One row per attempt (trace): a redelivered task's attempts share the generation id.
    Column("report_generation_id", String(36)),
    Column("trace_id", String(32), nullable=False, unique=True),
    Column("root_span_id", String(16), nullable=False),
    Column("business_id", Integer),
    Column("template_name", Text),
    Column("template_version", Text),
    Column("template_sha256", String(64)),
    Column("inputs_sha256", String(64)),
    Column("inputs_bytes", Integer),
    Column("inputs_snapshot", LargeBinary),
    Column("inputs_codec", Text),
    Column("html_sha256", String(64)),
    Column("output_sha256", String(64)),
    Column("output_bytes", Integer),
    Column("output_pages", Integer),
    Column("output_uri", Text),
    Column("status", Text, nullable=False),
    Column("error_type", Text),
    Column("error_message", Text),
    Column("started_at", TS, nullable=False),
    Column("ended_at", TS),
    Column("duration_ms", Float),
    Column("steps", JSON, nullable=False),
    Column("input_tables", JSON, nullable=False),
    Column("span_count", Integer, nullable=False),
    Column("span_tree", LargeBinary),
    Column("span_tree_codec", Text),
    Column("sampled", Boolean, nullable=False),
    Column("complete", Boolean, nullable=False),
    Column("incomplete_reasons", JSON, nullable=False),
    Column("service_name", Text),
    Column("service_version", Text),
    Column("created_at", TS, nullable=False),
    # Set by retention (otel-lineage prune) when the snapshot and span tree were dropped.
    Column("pruned_at", TS),
    # Trace id of the span that requested the report, and whether the trace could reach a
    # backend (sampled and a span exporter configured): revision 0005.
    Column("caller_trace_id", String(32)),
    Column("exported", Boolean),
    # Which attempt of its generation the trace was (a redelivered task): revision 0007.
    Column("attempt", Integer),
    # What rendered the PDF (versions, font subsetter, embedded fonts): revision 0008.
    Column("renderer", JSON),
    # The snapshot is in ``lineage_snapshots`` under (business_id, inputs_sha256), stored once
    # per content and optionally encrypted; NULL on rows that keep it inline: revision 0010.
    Column("inputs_snapshot_shared", Boolean),
    # Which spans of the trace were recorded, ``report`` or ``all``: revision 0011.
    Column("span_recording", Text),
    Index("ix_report_lineage_report_generation_id", "report_generation_id"),
    Index("ix_report_lineage_business_started", "business_id", "started_at"),
    Index("ix_report_lineage_template_started", "template_name", "template_version", "started_at"),
    Index("ix_report_lineage_inputs_sha256", "inputs_sha256"),
    Index("ix_report_lineage_output_sha256", "output_sha256"),
    Index("ix_report_lineage_started_at", "started_at"),
    Index("ix_report_lineage_caller_trace_id", "caller_trace_id"),
)

#: One row per writing process: what its lineage pipeline did. The audit sums them, so losses
#: that could not be prevented (dropped, evicted, late) are visible after the process is gone.
lineage_counters = Table(
    "lineage_counters",
    metadata,
    Column("instance_id", String(36), primary_key=True),
    Column("service_name", Text),
    Column("host", Text),
    Column("pid", Integer),
    Column("started_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("folded", BigInteger, nullable=False),
    Column("written", BigInteger, nullable=False),
    Column("dropped", BigInteger, nullable=False),
    Column("evicted", BigInteger, nullable=False),
    Column("late", BigInteger, nullable=False),
    Column("incomplete", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("pending", BigInteger, nullable=False),
    Column("quarantined", BigInteger, nullable=False, server_default="0"),
)

#: API keys of the lineage service (``otel_lineage.access.keys``): only the sha256 of a secret
#: is stored, never the secret. A name is unique among the keys not revoked (a partial unique
#: index, so two concurrent ``keys create --name alice`` cannot both win); a revoked name can be
#: given again. Revision ``0006``.
lineage_api_keys = Table(
    "lineage_api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_by", Text, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS),
    Column("revoked_at", TS),
    Column("last_used_at", TS),
    # Browser sessions of this key issued before this instant are void (sign out).
    Column("sessions_valid_after", TS),
    Index(
        "ux_lineage_api_keys_active_name",
        "name",
        unique=True,
        sqlite_where=text("revoked_at IS NULL"),
        postgresql_where=text("revoked_at IS NULL"),
    ),
)

#: Who read what (``otel_lineage.access.log``): every read of an input snapshot or a PDF, every
#: verify, identify, key change and prune, allowed or not. Appended in the transaction that
#: serves the read; the service never updates or deletes a row. Revision ``0006``.
lineage_access_log = Table(
    "lineage_access_log",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("at", TS, nullable=False),
    Column("user", Text, nullable=False),
    Column("role", String(16)),
    Column("action", String(32), nullable=False),
    Column("report_id", String(36)),
    Column("client", Text),
    Column("user_agent", Text),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text),
    Index("ix_lineage_access_log_at", "at"),
    Index("ix_lineage_access_log_report_at", "report_id", "at"),
    Index("ix_lineage_access_log_user_at", "user", "at"),
)

#: Input snapshots, once per business and content (``otel_lineage.protection.snapshots``):
#: ``codec`` says how ``data`` is stored (``zstd``, or ``zstd+aes-256-gcm`` under the business
#: data key ``key_id``). Keyed per business, not per content alone, because the data keys are
#: per business: erasing one business must not touch another's copy of the same bytes.
#: Revision ``0010``.
lineage_snapshots = Table(
    "lineage_snapshots",
    metadata,
    Column("business_id", Integer, primary_key=True),
    Column("inputs_sha256", String(64), primary_key=True),
    Column("codec", Text, nullable=False),
    Column("key_id", String(36)),
    Column("nonce", LargeBinary),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", TS, nullable=False),
)

#: One data key per business (``otel_lineage.protection.keys``), wrapped by a master key of the
#: key file (``OTEL_LINEAGE_SNAPSHOT_KEY_FILE``). ``forget`` deletes the wrapped bytes and keeps
#: the row as a tombstone (``destroyed_at``); at most one live key per business. Revision
#: ``0010``.
lineage_business_keys = Table(
    "lineage_business_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("business_id", Integer, nullable=False),
    Column("master_key_id", Text),
    Column("wrapped_key", LargeBinary),
    Column("created_at", TS, nullable=False),
    Column("rotated_at", TS),
    Column("destroyed_at", TS),
    Index(
        "ux_lineage_business_keys_live",
        "business_id",
        unique=True,
        sqlite_where=text("destroyed_at IS NULL"),
        postgresql_where=text("destroyed_at IS NULL"),
    ),
)


#: Tamper-evident seals (``otel_lineage.evidence.seals``): each seal covers the lineage rows
#: not sealed before it and is chained to its predecessor by hash. ``seal_no`` (primary key)
#: and ``prev_hash`` (unique) make a fork impossible in the database itself, whatever a sealer
#: does: two seals can never claim the same number or the same predecessor. Revision ``0009``.
lineage_seals = Table(
    "lineage_seals",
    metadata,
    Column(
        "seal_no",
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("prev_hash", String(64), nullable=False, unique=True),
    Column("seal_hash", String(64), nullable=False),
    Column("digest_version", Integer, nullable=False),
    Column("row_count", Integer, nullable=False),
    # Highest row id in the seal, and whether the seal took every row not yet sealed (a seal
    # cut at its size limit did not): what tells a late row from a back-dated one.
    Column("max_row_id", BigInteger),
    Column("exhaustive", Boolean, nullable=False),
    Column("sealed_at", TS, nullable=False),
    Column("sealed_by", Text),
    # sha256 of the raw Ed25519 public key, and the signature over the seal hash (NULL: unsigned).
    Column("key_id", String(64)),
    Column("signature", LargeBinary),
)

#: The rows of each seal with their digests, so an audit names exactly which row changed or
#: went. The primary key on ``row_id`` means a row is sealed at most once, by the database.
lineage_seal_rows = Table(
    "lineage_seal_rows",
    metadata,
    Column(
        "row_id",
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("seal_no", BigInteger, nullable=False),
    Column("trace_id", String(32), nullable=False),
    Column("report_generation_id", String(36)),
    Column("digest", String(64), nullable=False),
    Index("ix_lineage_seal_rows_seal_no_row_id", "seal_no", "row_id"),
)
