"""The durable spend ledger: one row per model call, in SQLite by default or any SQLAlchemy URL.

The schema grows by numbered migrations, so old ledgers keep working; on PostgreSQL one process at a
time migrates (an advisory lock). Every write is one short transaction; on SQLite it is `BEGIN
IMMEDIATE` under WAL, so several threads or processes can record (and reserve budget) at once without
lost updates. Reads are plain transactions: they neither wait for a writer nor hold one up.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tierflow.core import clock
from tierflow.core.config import RunConfig
from tierflow.core.usage import Usage

COLUMNS: tuple[str, ...] = (
    "id",
    "timestamp",
    "run_id",
    "flow",
    "flow_run_id",
    "task_run_id",
    "phase",
    "complexity",
    "tier",
    "provider",
    "model",
    "subject",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_ms",
    "started_at",
    "batch",
    "batch_id",
    "cached_result",
    "usage_known",
    "route_rule",
    "downgraded_from",
    "outcome",
    "checks_failed",
    "attempt",
    "escalated_from",
    "project",
    "deployment",
    "value",
)
"""The ledger's stable column names, as `tierflow spend --format json|csv` emits them."""

metadata = sa.MetaData()

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("timestamp", sa.String(32), nullable=False, index=True),
    sa.Column("run_id", sa.String(64), index=True),
    sa.Column("flow", sa.String(64)),
    sa.Column("flow_run_id", sa.String(64)),
    sa.Column("task_run_id", sa.String(64)),
    sa.Column("phase", sa.String(64)),
    sa.Column("complexity", sa.String(16)),
    sa.Column("tier", sa.String(64)),
    sa.Column("provider", sa.String(64)),
    sa.Column("model", sa.String(128)),
    sa.Column("subject", sa.String(256)),
    sa.Column("input_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("output_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cache_read_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cache_write_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cache_write_1h_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("reasoning_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("latency_ms", sa.Float),
    sa.Column("started_at", sa.String(32)),
    sa.Column("batch", sa.Boolean, nullable=False, default=False),
    sa.Column("batch_id", sa.String(128)),
    sa.Column("cached_result", sa.Boolean, nullable=False, default=False),
    sa.Column("usage_known", sa.Boolean, nullable=False, default=True),
    sa.Column("route_rule", sa.String(256)),
    sa.Column("downgraded_from", sa.String(64)),
    # What the answer was: ok, malformed, check_failed, truncated or refused. Every billed answer has a row;
    # so does every attempt whose answer was lost (`lost`: usage unknown, its worst case as its cost).
    sa.Column("outcome", sa.String(16), nullable=False, default="ok"),
    sa.Column("checks_failed", sa.String(256)),
    sa.Column("attempt", sa.Integer, nullable=False, default=1),
    sa.Column("escalated_from", sa.String(64)),
    sa.Column("project", sa.String(128), index=True),
    sa.Column("deployment", sa.String(128)),
    # Version 11: which request this answer was to (`requests`), so a router can learn per request.
    sa.Column("request_id", sa.String(64), index=True),
    sa.Column("value", sa.Float),  # the request's value (0.5-5; tierflow.core.routing.value_of), version 11
)

response_cache = sa.Table(
    "response_cache",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(192)),
    sa.Column("text", sa.Text),
    sa.Column("data_json", sa.Text),
    sa.Column("created", sa.String(32)),
    # What is needed to send the request again (tier trials replay past inputs).
    sa.Column("flow", sa.String(64)),
    sa.Column("phase", sa.String(64)),
    sa.Column("request_json", sa.Text),
)

output_modes = sa.Table(
    "output_modes",
    metadata,
    # The structured-output form a provider's model accepts, learned when a server rejects another form.
    sa.Column("provider", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("mode", sa.String(32), nullable=False),
    sa.Column("updated", sa.String(32)),
)

reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", sa.String(32), nullable=False),
    sa.Column("run_id", sa.String(64), index=True),
    sa.Column("flow", sa.String(64)),
    sa.Column("phase", sa.String(64)),
    sa.Column("usd", sa.Float, nullable=False, default=0.0),
    sa.Column("tokens", sa.Integer, nullable=False, default=0),
    sa.Column("open", sa.Boolean, nullable=False, default=True, index=True),
    sa.Column("kept", sa.Boolean, nullable=False, default=False),
    sa.Column("project", sa.String(128)),
    # The lease (version 6): held until `lease_expires`, in seconds since the epoch by the *database's*
    # clock, so that workers on hosts whose clocks differ agree on it. The holder renews it.
    sa.Column("lease_expires", sa.Float),
    sa.Column("held_since", sa.Float),
    sa.Column("holder_pid", sa.Integer),
    sa.Column("holder_host", sa.String(255)),
    # Also version 6: the tier the call was reserved on (for tier-scoped budgets), and whether its model
    # has a known price (an unpriced one is counted at a budget's fallback price, if it allows any).
    sa.Column("tier", sa.String(64)),
    sa.Column("priced", sa.Boolean, nullable=False, default=True),
)

batch_items = sa.Table(
    "batch_items",
    metadata,
    # The request's cache key: a rerun of the same request finds its batch instead of resubmitting.
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("custom_id", sa.String(64), nullable=False),
    sa.Column("batch_id", sa.String(128), nullable=False, index=True),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("phase", sa.String(64)),
    sa.Column("tier", sa.String(64)),
    sa.Column("subject", sa.String(256)),
    sa.Column("reservation_id", sa.Integer),
    # `submitted`, then `done`, `retried`, `expired` or `canceled`.
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created", sa.String(32)),
    sa.Column("downgraded_from", sa.String(64)),
    # Version 10: a batch is recorded (`submitting`) before it is sent, under a key of tierflow's own that
    # the provider also sees (metadata, or the custom ids), by a holder process, at database seconds
    # `submitted_s`; so a crash between the provider accepting it and tierflow recording its id cannot
    # orphan it: the next run finds it in the provider's batch list.
    sa.Column("batch_key", sa.String(64), index=True),
    sa.Column("holder_pid", sa.Integer),
    sa.Column("holder_host", sa.String(255)),
    sa.Column("submitted_s", sa.Float),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("flow", sa.String(64), nullable=False),
    sa.Column("parameters", sa.Text, nullable=False),
    sa.Column("created", sa.String(32)),
)

signals = sa.Table(
    "signals",
    metadata,
    # Quality evidence beside the calls' own outcomes: judge verdicts, human edits and ratings, shadow calls.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("timestamp", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # judge | edit | rating | shadow
    sa.Column("flow", sa.String(64)),
    sa.Column("phase", sa.String(64)),
    sa.Column("tier", sa.String(64)),
    sa.Column("model", sa.String(192)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("subject", sa.String(256)),
    sa.Column("passed", sa.Boolean),  # None: neutral, counted nowhere
    sa.Column("value", sa.Float),
    sa.Column("detail", sa.String(512)),
    sa.Column("note", sa.String(512), index=True),
)

drafts = sa.Table(
    "drafts",
    metadata,
    # The text tierflow wrote, so a later scan can measure how much the person changed it.
    sa.Column("note", sa.String(512), primary_key=True),
    sa.Column("run_id", sa.String(64)),
    sa.Column("flow", sa.String(64)),
    sa.Column("phase", sa.String(64)),
    sa.Column("subject", sa.String(256)),
    sa.Column("tier", sa.String(64)),
    sa.Column("model", sa.String(192)),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created", sa.String(32)),
)

tier_slots = sa.Table(
    "tier_slots",
    metadata,
    # One row per model call in flight on a tier with `concurrency`: held by a process until released, or until
    # its lease (seconds since the epoch, renewed while the call runs) lapses because the process died.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tier", sa.String(64), nullable=False, index=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("acquired", sa.String(32), nullable=False),
    sa.Column("lease_until", sa.Float, nullable=False),
)

requests = sa.Table(
    "requests",
    metadata,
    # Version 11: the text of each request a phase sent, once, under an id that every tier's answer to it shares
    # (the first prompt, without the model or a retry's note), for the per-request router (tierflow.learn).
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("flow", sa.String(64)),
    sa.Column("phase", sa.String(64)),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created", sa.String(32)),
)

schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))


def _as_created(table: sa.Table, later: tuple[str, ...]) -> sa.Table:
    """`table` as an earlier migration created it: without the columns that later migrations add."""
    return sa.Table(table.name, sa.MetaData(), *[c._copy() for c in table.columns if c.name not in later])


_CALLS_ADDED_IN_5 = (
    "outcome",
    "checks_failed",
    "attempt",
    "escalated_from",
    "project",
    "deployment",
    "request_id",
    "value",
)
"""Columns of `calls` that migrations after the first add (5, and 7 for attribution)."""
_CACHE_ADDED_IN_5 = ("flow", "phase", "request_json")


def _migration_1(conn: Connection) -> None:
    _as_created(calls, _CALLS_ADDED_IN_5).create(conn, checkfirst=True)
    _as_created(response_cache, _CACHE_ADDED_IN_5).create(conn, checkfirst=True)


def _migration_2(conn: Connection) -> None:
    # The reservations table as version 2 defined it; later migrations alter it, never this definition.
    sa.Table(
        "reservations",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(64), index=True),
        sa.Column("flow", sa.String(64)),
        sa.Column("phase", sa.String(64)),
        sa.Column("usd", sa.Float, nullable=False, default=0.0),
        sa.Column("tokens", sa.Integer, nullable=False, default=0),
        sa.Column("open", sa.Boolean, nullable=False, default=True, index=True),
    ).create(conn, checkfirst=True)


def _migration_3(conn: Connection) -> None:
    # Reservations of calls whose usage never arrived stay charged: kept, but no longer in flight.
    conn.exec_driver_sql("ALTER TABLE reservations ADD COLUMN kept BOOLEAN NOT NULL DEFAULT FALSE")


def _migration_4(conn: Connection) -> None:
    _as_created(batch_items, ("downgraded_from", *_BATCH_ITEMS_ADDED_IN_10)).create(conn, checkfirst=True)
    runs.create(conn, checkfirst=True)


def _migration_5(conn: Connection) -> None:
    # The closed loop: every billed answer's outcome, and what the output-mode fallback learned.
    _add_columns(
        conn,
        "calls",
        {
            "outcome": "VARCHAR(16) NOT NULL DEFAULT 'ok'",
            "checks_failed": "VARCHAR(256)",
            "attempt": "INTEGER NOT NULL DEFAULT 1",
            "escalated_from": "VARCHAR(64)",
        },
    )
    _add_columns(conn, "response_cache", {"flow": "VARCHAR(64)", "phase": "VARCHAR(64)", "request_json": "TEXT"})
    _add_columns(conn, "batch_items", {"downgraded_from": "VARCHAR(64)"})
    output_modes.create(conn, checkfirst=True)


def _migration_6(conn: Connection) -> None:
    signals.create(conn, checkfirst=True)
    drafts.create(conn, checkfirst=True)


def _migration_7(conn: Connection) -> None:
    # Attribution: the project each call (and each budget reservation) is charged to, and the deployment.
    # Migration 1 creates `calls` from its current definition, so a new ledger already has these columns.
    _add_columns(conn, "calls", {"project": "VARCHAR(128)", "deployment": "VARCHAR(128)"})
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_calls_project ON calls (project)")
    _add_columns(conn, "reservations", {"project": "VARCHAR(128)"})


def _add_columns(conn: Connection, table: str, columns: dict[str, str]) -> None:
    present = {c["name"] for c in sa.inspect(conn).get_columns(table)}
    for name, sql_type in columns.items():
        if name not in present:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")


def _migration_8(conn: Connection) -> None:
    # Reservation leases, tiers and whether their model is priced. A reservation left open by an older
    # tierflow has no holder that will renew it: its lease is already over, so the next reservation
    # attempt releases it.
    _add_columns(
        conn,
        "reservations",
        {
            "lease_expires": "FLOAT",
            "held_since": "FLOAT",
            "holder_pid": "INTEGER",
            "holder_host": "VARCHAR(255)",
            "tier": "VARCHAR(64)",
            "priced": "BOOLEAN NOT NULL DEFAULT TRUE",
        },
    )
    conn.execute(reservations.update().where(reservations.c.open.is_(True)).values(lease_expires=0.0))


MIGRATION_LOCK = 7263544500
"""PostgreSQL advisory lock key held while a ledger is migrated (budget reservations use their own key)."""


def _migration_9(conn: Connection) -> None:
    # Tier concurrency slots shared by every process on this ledger.
    tier_slots.create(conn, checkfirst=True)


_BATCH_ITEMS_ADDED_IN_10 = ("batch_key", "holder_pid", "holder_host", "submitted_s")


def _migration_10(conn: Connection) -> None:
    # Batches recorded before they are submitted (see `batch_items`).
    _add_columns(
        conn,
        "batch_items",
        {"batch_key": "VARCHAR(64)", "holder_pid": "INTEGER", "holder_host": "VARCHAR(255)", "submitted_s": "FLOAT"},
    )
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_batch_items_batch_key ON batch_items (batch_key)")


def _migration_request_router(conn: Connection) -> None:
    # Per-request routing (issue 22): each answer's request id, and each request's text once.
    _add_columns(conn, "calls", {"request_id": "VARCHAR(64)", "value": "FLOAT"})
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_calls_request_id ON calls (request_id)")
    requests.create(conn, checkfirst=True)


MIGRATIONS = (
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
    _migration_8,
    _migration_9,
    _migration_10,
    _migration_request_router,
)
"""Append only: migration N brings a ledger from version N-1 to N."""


@dataclass
class CallRecord:
    """One model call, as the ledger stores it."""

    run_id: str
    flow: str
    phase: str
    complexity: str
    tier: str
    provider: str
    model: str
    usage: Usage
    cost_usd: float | None
    latency_ms: float
    subject: str = ""
    started_at: str = ""
    batch: bool = False
    batch_id: str | None = None
    cached_result: bool = False
    route_rule: str = ""
    downgraded_from: str | None = None
    outcome: str = "ok"
    checks_failed: str | None = None
    attempt: int = 1
    escalated_from: str | None = None
    flow_run_id: str | None = None
    task_run_id: str | None = None
    project: str | None = None
    deployment: str | None = None
    timestamp: str = field(default_factory=lambda: now_iso())
    request_id: str | None = None
    value: float | None = None

    def row(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k != "usage"}
        usage = self.usage
        row.update(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            usage_known=usage.known,
        )
        return row


now_iso = clock.now_iso


_WRITE = "tierflow_write"
"""Execution option that marks a connection's transaction as a write (see `Ledger.transaction`)."""

_engines: dict[tuple[str, int], Engine] = {}
_engines_lock = threading.Lock()

POOL_MARGIN = 4
"""Connections beyond one per worker: the flow's own thread, the lease renewers of budgets and tier slots."""


def pool_size(workers: int) -> int:
    """The ledger connections a process running `workers` task runs at once keeps open: one each, plus a margin."""
    return workers + POOL_MARGIN


def _engine(url: str, size: int) -> Engine:
    with _engines_lock:
        engine = _engines.get((url, size))
        if engine is None:
            engine = _create_engine(url, size)
            _engines[(url, size)] = engine
        return engine


def database_seconds(conn: Connection) -> float:
    """Now, in seconds since the epoch, by the database's clock: the one clock every worker shares.

    Reservation leases are durations measured against it, never dates, so they do not depend on a host's
    clock, time zone or `TIERFLOW_CLOCK_START`.
    """
    if conn.dialect.name == "postgresql":
        return float(conn.exec_driver_sql("SELECT extract(epoch FROM clock_timestamp())").scalar())
    return float(conn.exec_driver_sql("SELECT (julianday('now') - 2440587.5) * 86400.0").scalar())


def dispose_engine(url: str) -> None:
    """Close every pooled connection to `url` and forget its engine (before a database is dropped)."""
    with _engines_lock:
        engines = [_engines.pop(key) for key in [k for k in _engines if k[0] == url]]
    for engine in engines:
        engine.dispose()


def _create_engine(url: str, size: int) -> Engine:
    # A pool of `size` (`pool_size(workers)`), and as many again in overflow for a burst, never the library's
    # default 5 + 10 that a wide phase used to exhaust (`QueuePool limit of size 5 overflow 10 reached`).
    pool = {"pool_size": size, "max_overflow": size}
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True, **pool)
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, **pool)
    else:
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see `_on_begin`).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=60000")
        # WAL is a property of the file: set it once. Switching modes needs a lock that SQLite does not
        # wait for, so a process joining a busy ledger must not try again (it would fail "locked").
        if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            _set_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write transaction (`Ledger.transaction`) takes the write lock up front with IMMEDIATE, so
        # read-check-write sequences (budget reservations) cannot interleave across threads or processes.
        # Every other transaction is a read: a plain BEGIN, which under WAL neither waits for a writer
        # nor holds one up, however long it runs (a `tierflow spend` over a large ledger).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


def _set_wal(cursor: Any) -> None:
    import sqlite3

    for attempt in range(200):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 199:
                raise
            time.sleep(0.05)


class Ledger:
    """Where every call's spend is kept."""

    def __init__(self, url: str, *, workers: int | None = None) -> None:
        """`workers`: task runs of this process that use the ledger at once (`[run] workers`); sizes the pool."""
        self.url = url
        self.engine = _engine(url, pool_size(workers or RunConfig().workers))
        self._writer = self.engine.execution_options(**{_WRITE: True})
        self._migrate()

    @classmethod
    def for_vault(cls, vault: Path) -> Ledger:
        return cls(f"sqlite:///{(vault / '.tierflow' / 'ledger.sqlite').resolve()}")

    def _migrate(self) -> None:
        with self.transaction() as conn:
            # One migrator at a time: SQLite's BEGIN IMMEDIATE already serialises this transaction; on
            # PostgreSQL two workers starting on a fresh ledger would both create the tables (and both
            # record each version) without a lock held until commit.
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            schema_version.create(conn, checkfirst=True)
            current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
            for number, migration in enumerate(MIGRATIONS, start=1):
                if number > current:
                    migration(conn)
                    conn.execute(schema_version.insert().values(version=number))

    @property
    def version(self) -> int:
        with self.reading() as conn:
            return conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it holds the write lock from its start (`BEGIN IMMEDIATE`)."""
        with self._writer.begin() as conn:
            yield conn

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only transaction: plain, so it takes no write lock."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def record(self, call: CallRecord, *, conn: Connection | None = None) -> int:
        """Store one call; returns its row id."""
        if conn is not None:
            # One compiled statement with bound parameters: far cheaper than `.values(**row)` on every call.
            return conn.execute(calls.insert(), call.row()).inserted_primary_key[0]
        with self.transaction() as own:
            return own.execute(calls.insert(), call.row()).inserted_primary_key[0]

    def rows(
        self,
        *,
        since: str | None = None,
        run_id: str | None = None,
        flow: str | None = None,
        project: str | None = None,
    ) -> list[dict[str, Any]]:
        """Ledger rows, oldest first, with the stable column names."""
        query = sa.select(*[calls.c[name] for name in COLUMNS]).order_by(calls.c.id)
        if since:
            query = query.where(calls.c.timestamp >= since)
        if run_id:
            query = query.where(calls.c.run_id == run_id)
        if flow:
            query = query.where(calls.c.flow == flow)
        if project:
            query = query.where(calls.c.project == project)
        with self.reading() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def in_flight(self) -> list[dict[str, Any]]:
        """Budget reservations still open: the calls in flight now, in any process sharing this ledger."""
        columns = [reservations.c[c] for c in ("id", "created", "run_id", "flow", "phase", "project", "usd", "tokens")]
        query = sa.select(*columns).where(reservations.c.open.is_(True)).order_by(reservations.c.id)
        with self.reading() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def remember_run(self, run_id: str, flow: str, parameters: dict[str, Any]) -> None:
        """Keep a run's parameters, so `tierflow resume RUN` can run it again to collect its batches."""
        with self.transaction() as conn:
            if conn.execute(sa.select(runs.c.run_id).where(runs.c.run_id == run_id)).first() is None:
                conn.execute(
                    runs.insert().values(
                        run_id=run_id, flow=flow, parameters=json.dumps(parameters, default=str), created=now_iso()
                    )
                )

    def run_parameters(self, run_id: str) -> tuple[str, dict[str, Any]] | None:
        with self.reading() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()
        return None if row is None else (row.flow, json.loads(row.parameters))

    def cached_response(self, key: str, *, conn: Connection | None = None) -> tuple[str, dict[str, Any] | None] | None:
        if conn is not None:
            row = conn.execute(_CACHED, {"key": key}).first()
        else:
            with self.reading() as own:
                row = own.execute(_CACHED, {"key": key}).first()
        if row is None:
            return None
        return row.text, (json.loads(row.data_json) if row.data_json else None)

    def cache_response(
        self,
        key: str,
        model: str,
        text: str,
        data: dict[str, Any] | None,
        *,
        request: dict[str, Any] | None = None,
        flow: str | None = None,
        phase: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        """Store an answer that passed, with what is needed to send its request again."""
        values = {
            "key": key,
            "model": model,
            "text": text,
            "data_json": json.dumps(data) if data is not None else None,
            "created": now_iso(),
            "flow": flow,
            "phase": phase,
            "request_json": json.dumps(request, ensure_ascii=False, default=str) if request is not None else None,
        }
        if conn is None:
            with self.transaction() as own:
                self.cache_response(key, model, text, data, request=request, flow=flow, phase=phase, conn=own)
            return
        # An upsert: two calls storing the same answer at once (threads, or workers on one PostgreSQL ledger)
        # must not collide on the key the way delete-then-insert does under READ COMMITTED.
        _upsert(conn, response_cache, values, ["key"])

    def remember_request(self, request_id: str, text: str, *, flow: str, phase: str, conn: Connection) -> None:
        """Keep a request's text once, under the id its answers carry (`calls.request_id`)."""
        values = {"request_id": request_id, "flow": flow, "phase": phase, "text": text, "created": now_iso()}
        _upsert(conn, requests, values, ["request_id"])

    def remember_draft(self, note: str, text: str, **call: Any) -> None:
        """Keep the text a draft was written with, and the call that produced it, for the edit signal."""
        with self.transaction() as conn:
            _upsert(conn, drafts, {"note": note, "text": text, "created": now_iso(), **call}, ["note"])

    def output_mode(self, provider: str, model: str) -> str | None:
        """The structured-output form this provider's model is known to accept, if any was learned."""
        with self.reading() as conn:
            return conn.execute(
                sa.select(output_modes.c.mode).where(output_modes.c.provider == provider, output_modes.c.model == model)
            ).scalar()

    def remember_output_mode(self, provider: str, model: str, mode: str) -> None:
        with self.transaction() as conn:
            values = {"provider": provider, "model": model, "mode": mode, "updated": now_iso()}
            _upsert(conn, output_modes, values, ["provider", "model"])


# A lookup on every call's path, built once with a bound parameter.
_CACHED = sa.select(response_cache.c.text, response_cache.c.data_json).where(
    response_cache.c.key == sa.bindparam("key")
)


def _upsert(conn: Connection, table: sa.Table, values: dict[str, Any], keys: list[str]) -> Any:
    """INSERT ... ON CONFLICT (keys) DO UPDATE, in the connection's dialect (SQLite or PostgreSQL), run on
    `values`. The statement is built once per shape and takes the values as bound parameters: building it
    around the values on every call cost more than the rest of the cache write on the hot path."""
    statement = _upsert_statement(conn.dialect.name, table, tuple(values), tuple(keys))
    return conn.execute(statement, values)


@lru_cache(maxsize=64)
def _upsert_statement(dialect: str, table: sa.Table, columns: tuple[str, ...], keys: tuple[str, ...]) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(table)
    return statement.on_conflict_do_update(
        index_elements=list(keys), set_={k: statement.excluded[k] for k in columns if k not in keys}
    )


GROUPS = ("phase", "tier", "model", "flow", "day", "week", "run_id", "project", "deployment", "value")


def usage_of(row: dict[str, Any]) -> Usage:
    """The Usage a ledger row recorded."""
    return Usage(
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cache_read_tokens=row["cache_read_tokens"],
        cache_write_tokens=row["cache_write_tokens"],
        cache_write_1h_tokens=row["cache_write_1h_tokens"],
        reasoning_tokens=row["reasoning_tokens"],
        known=bool(row["usage_known"]),
    )
