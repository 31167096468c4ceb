"""The durable spend ledger: one row per model call, in SQLite by default or any SQLAlchemy URL.

The schema grows by numbered migrations, so old ledgers keep working; on PostgreSQL one process at a
time migrates (an advisory lock). Every write is one short transaction; on SQLite it is `BEGIN
IMMEDIATE` under WAL, so several threads or processes can record (and reserve budget) at once without
lost updates. Reads are plain transactions: they neither wait for a writer nor hold one up.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tierflow.core import clock
from tierflow.core.config import RunConfig
from tierflow.core.errors import LedgerError, LedgerUnreachable, NoLedger
from tierflow.core.folders import unwritable
from tierflow.core.urls import URL_FORMS, connection_advice, ledger_url_problem, masked_url
from tierflow.core.usage import TOKEN_KINDS, UNKNOWN_USAGE, Usage

log = logging.getLogger("tierflow")

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


class _Stored:
    """A string as the ledger stores it, alike on both databases: NUL as U+FFFD (PostgreSQL's text cannot hold
    NUL, and a model's answer or a note's title may); a lone surrogate as U+FFFD (no UTF-8 can hold one, and a
    file name that is not UTF-8 reads as one: a submission unpacked from an old zip); and clipped to its
    column's length (PostgreSQL refuses a longer one, SQLite keeps it; a user's own flow or project name, or a
    local server's model path, may be longer). The row that records a billed call must never fail on its
    strings."""

    impl: sa.String

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if not isinstance(value, str):
            return value
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                value = _SURROGATE.sub("\ufffd", value)
        length = self.impl.length
        return value[:length] if length is not None and len(value) > length else value


_SURROGATE = re.compile("[\ud800-\udfff]")


class String(_Stored, sa.TypeDecorator[str]):
    impl = sa.String
    cache_ok = True


class Text(_Stored, sa.TypeDecorator[str]):
    impl = sa.Text
    cache_ok = True


metadata = sa.MetaData()

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("timestamp", String(32), nullable=False, index=True),
    sa.Column("run_id", String(64), index=True),
    sa.Column("flow", String(64)),
    sa.Column("flow_run_id", String(64)),
    sa.Column("task_run_id", String(64)),
    sa.Column("phase", String(64)),
    sa.Column("complexity", String(16)),
    sa.Column("tier", String(64)),
    sa.Column("provider", String(64)),
    sa.Column("model", String(128)),
    sa.Column("subject", String(256)),
    sa.Column("input_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("output_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cache_read_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cache_write_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cache_write_1h_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("reasoning_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("latency_ms", sa.Float),
    sa.Column("started_at", String(32)),
    sa.Column("batch", sa.Boolean, nullable=False, default=False),
    sa.Column("batch_id", String(128)),
    sa.Column("cached_result", sa.Boolean, nullable=False, default=False),
    sa.Column("usage_known", sa.Boolean, nullable=False, default=True),
    sa.Column("route_rule", String(256)),
    sa.Column("downgraded_from", String(64)),
    # What the answer was: ok, malformed, check_failed, truncated or refused. Every billed answer has a row;
    # so does every attempt whose answer was lost (`lost`: usage unknown, its worst case as its cost).
    sa.Column("outcome", String(16), nullable=False, default="ok"),
    sa.Column("checks_failed", String(256)),
    sa.Column("attempt", sa.Integer, nullable=False, default=1),
    sa.Column("escalated_from", String(64)),
    sa.Column("project", String(128), index=True),
    sa.Column("deployment", String(128)),
    # Version 11: which request this answer was to (`requests`), so a router can learn per request.
    sa.Column("request_id", String(64), index=True),
    sa.Column("value", sa.Float),  # the request's value (0.5-5; tierflow.core.routing.value_of), version 11
    # Version 19: a `lost` call's worst-case tokens (`CallRecord.worst_tokens`), counted by token budgets in place of
    # its unknown usage, so totals rebuilt from the calls count it as the live ones did. Not a stable column: its
    # tokens stay unknown in `tierflow spend`, as its usage is.
    sa.Column("worst_tokens", sa.Integer),
)

response_cache = sa.Table(
    "response_cache",
    metadata,
    sa.Column("key", String(64), primary_key=True),
    sa.Column("model", String(192)),
    sa.Column("text", Text),
    sa.Column("data_json", Text),
    sa.Column("created", String(32)),
    # What is needed to send the request again (tier trials replay past inputs).
    sa.Column("flow", String(64)),
    sa.Column("phase", String(64)),
    sa.Column("request_json", Text),
    # A kept answer (no tier passed its checks), remembered for its request so an unchanged rerun reuses it
    # rather than paying again; never served as validated (see `Ledger.remember_kept`).
    sa.Column("kept", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("checks_failed", String(256)),
    sa.Column("tier", String(64)),
)

output_modes = sa.Table(
    "output_modes",
    metadata,
    # The structured-output form a provider's model accepts, learned when a server rejects another form.
    sa.Column("provider", String(64), primary_key=True),
    sa.Column("model", String(128), primary_key=True),
    sa.Column("mode", String(32), nullable=False),
    sa.Column("updated", String(32)),
)

reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", String(32), nullable=False),
    sa.Column("run_id", String(64), index=True),
    sa.Column("flow", String(64)),
    sa.Column("phase", String(64)),
    sa.Column("usd", sa.Float, nullable=False, default=0.0),
    sa.Column("tokens", sa.Integer, nullable=False, default=0),
    sa.Column("open", sa.Boolean, nullable=False, default=True, index=True),
    sa.Column("kept", sa.Boolean, nullable=False, default=False),
    sa.Column("project", String(128)),
    # The lease (version 6): held until `lease_expires`, in seconds since the epoch by the *database's*
    # clock, so that workers on hosts whose clocks differ agree on it. The holder renews it.
    sa.Column("lease_expires", sa.Float),
    sa.Column("held_since", sa.Float),
    sa.Column("holder_pid", sa.Integer),
    sa.Column("holder_host", String(255)),
    # Also version 6: the tier the call was reserved on (for tier-scoped budgets), and whether its model
    # has a known price (an unpriced one is counted at a budget's fallback price, if it allows any).
    sa.Column("tier", String(64)),
    sa.Column("priced", sa.Boolean, nullable=False, default=True),
    # Version 18: the call's route, so a reservation released with its holder gone can be recorded as the call
    # it was (`lost`); and whether it is a provider batch item's (recorded by the batch's collection instead).
    sa.Column("provider", String(64)),
    sa.Column("model", String(128)),
    sa.Column("complexity", String(16)),
    sa.Column("batch", sa.Boolean, nullable=False, server_default=sa.false()),  # the migration's default
)

batch_items = sa.Table(
    "batch_items",
    metadata,
    # The request's cache key: a rerun of the same request finds its batch instead of resubmitting.
    sa.Column("key", String(64), primary_key=True),
    sa.Column("custom_id", String(64), nullable=False),
    sa.Column("batch_id", String(128), nullable=False, index=True),
    sa.Column("provider", String(64), nullable=False),
    sa.Column("run_id", String(64)),
    sa.Column("phase", String(64)),
    sa.Column("tier", String(64)),
    sa.Column("subject", String(256)),
    sa.Column("reservation_id", sa.Integer),
    # `submitted`, then `done`, `retried`, `refused` (too long for the model), `expired` or `canceled`.
    sa.Column("status", String(16), nullable=False),
    sa.Column("created", String(32)),
    sa.Column("downgraded_from", String(64)),
    # Version 10: a batch is recorded (`submitting`) before it is sent, under a key of tierflow's own that
    # the provider also sees (metadata, or the custom ids), by a holder process, at database seconds
    # `submitted_s`; so a crash between the provider accepting it and tierflow recording its id cannot
    # orphan it: the next run finds it in the provider's batch list.
    sa.Column("batch_key", String(64), index=True),
    sa.Column("holder_pid", sa.Integer),
    sa.Column("holder_host", String(255)),
    sa.Column("submitted_s", sa.Float),
    # Version 20: a `refused` item's error, in the provider's words: a rerun that would send the same request
    # (same model, same prompt) reports it again in the same words instead of sending it to be refused again.
    sa.Column("error", Text),
    # Version 21: the ids of the batches the provider listed just before this one was sent, space-separated: a
    # look for this batch by its size and age (Anthropic's batches carry no key of tierflow's) never takes one of
    # them for it. None on a claim recorded before (nothing is excluded then).
    sa.Column("seen", Text),
)

SUBMITTED = ("submitting", "submitted")
"""Statuses of a batch item that is (or may be) at the provider."""

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", String(64), primary_key=True),
    sa.Column("flow", String(64), nullable=False),
    sa.Column("parameters", Text, nullable=False),
    sa.Column("created", String(32)),
)

signals = sa.Table(
    "signals",
    metadata,
    # Quality evidence beside the calls' own outcomes: judge verdicts, human edits and ratings, shadow calls.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("timestamp", String(32), nullable=False),
    sa.Column("kind", String(16), nullable=False),  # judge | edit | rating | shadow
    sa.Column("flow", String(64)),
    sa.Column("phase", String(64)),
    sa.Column("tier", String(64)),
    sa.Column("model", String(192)),
    sa.Column("run_id", String(64)),
    sa.Column("subject", String(256)),
    sa.Column("passed", sa.Boolean),  # None: neutral, counted nowhere
    sa.Column("value", sa.Float),
    sa.Column("detail", String(512)),
    sa.Column("note", String(512), index=True),
    # Version 16: the request (`calls.request_id`) whose answer on `tier` this signal judges, so the per-request
    # router learns from it (tierflow.learn.labels); None for signals that judge no one answer (a skipped shadow
    # call) or whose link could not be recovered.
    sa.Column("request_id", String(64), index=True),
)

drafts = sa.Table(
    "drafts",
    metadata,
    # The text tierflow wrote, so a later scan can measure how much the person changed it.
    sa.Column("note", String(512), primary_key=True),
    sa.Column("run_id", String(64)),
    sa.Column("flow", String(64)),
    sa.Column("phase", String(64)),
    sa.Column("subject", String(256)),
    sa.Column("tier", String(64)),
    sa.Column("model", String(192)),
    sa.Column("text", Text, nullable=False),
    sa.Column("created", String(32)),
    sa.Column("request_id", String(64)),  # version 16: the request the draft's answer was to
)

tier_slots = sa.Table(
    "tier_slots",
    metadata,
    # One row per model call in flight on a tier with `concurrency`: held by a process until released, or until
    # its lease (seconds since the epoch, renewed while the call runs) lapses because the process died.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tier", String(64), nullable=False, index=True),
    sa.Column("holder", String(128), nullable=False),
    sa.Column("acquired", String(32), nullable=False),
    sa.Column("lease_until", sa.Float, nullable=False),
)

budget_scopes = sa.Table(
    "budget_scopes",
    metadata,
    # Version 11: every budget scope (period, time zone and filters) some config has named on this ledger. Each call
    # recorded and each reservation kept adds to the running totals of every scope it falls in, whichever process
    # records it, so a budget check reads one row per budget instead of summing the calls.
    sa.Column("scope", String(512), primary_key=True),
    sa.Column("period", String(8), nullable=False),  # run | day | week | month
    sa.Column("tz", String(64), nullable=False),
    sa.Column("flow", String(64), nullable=False),
    sa.Column("phase", String(64), nullable=False),
    sa.Column("tier", String(64), nullable=False),
    sa.Column("project", String(128), nullable=False),
    # The start of the first period whose totals are complete (rebuilt from the calls when the scope was first
    # named); an earlier period is summed from the calls. None for `run` scopes (every run is rebuilt).
    sa.Column("tracked_from", String(32)),
    sa.Column("registered", String(32)),
)

budget_totals = sa.Table(
    "budget_totals",
    metadata,
    # Version 11: one row per budget scope and period (a period's UTC start, or a run id): what the calls and the
    # kept reservations in it spent. `unpriced_tokens`: tokens of calls of unknown price, which a budget that
    # allows them counts at its fallback price.
    sa.Column("key", String(700), primary_key=True),  # scope, a newline, the period
    sa.Column("usd", sa.Float, nullable=False, default=0.0),
    sa.Column("tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("unpriced_tokens", sa.BigInteger, nullable=False, default=0),
)

requests = sa.Table(
    "requests",
    metadata,
    # Every request a phase sends, once per tier it reaches, with that tier's first answer's outcome: what tier
    # trials replay (passed or not) and what a per-request router learns from. `checks` holds the phase's check
    # names and how to rebuild them (`Check.rebuild`), so a trial runs the phase's own checks.
    sa.Column("key", String(64), primary_key=True),
    sa.Column("tier", String(64), primary_key=True),
    sa.Column("request_key", String(64), nullable=False, index=True),
    sa.Column("timestamp", String(32), nullable=False),
    sa.Column("run_id", String(64)),
    sa.Column("flow", String(64)),
    sa.Column("phase", String(64)),
    sa.Column("complexity", String(16)),
    sa.Column("project", String(128)),
    sa.Column("subject", String(256)),
    sa.Column("model", String(192)),
    sa.Column("outcome", String(16), nullable=False),
    sa.Column("checks_failed", String(256)),
    sa.Column("request_json", Text, nullable=False),
    sa.Column("checks_json", Text),
    sa.Index("ix_requests_flow_phase", "flow", "phase"),
)

evidence_totals = sa.Table(
    "evidence_totals",
    metadata,
    # Routing evidence, counted as calls are recorded (a trigger on `calls`, see `_migration_evidence_totals`):
    # per flow, phase, complexity, project and tier, each tier's first answers (`tierflow.core.evidence`), how
    # many passed, and their cost. Adaptive routing and `routing suggest` read these few rows, never the calls.
    # A missing value is stored as '' (a primary key cannot hold NULL).
    sa.Column("flow", String(64), primary_key=True),
    sa.Column("phase", String(64), primary_key=True),
    sa.Column("complexity", String(16), primary_key=True),
    sa.Column("project", String(128), primary_key=True),
    sa.Column("tier", String(64), primary_key=True),
    sa.Column("n", sa.Integer, nullable=False, default=0),
    sa.Column("passed", sa.Integer, nullable=False, default=0),
    sa.Column("cost_sum", sa.Float, nullable=False, default=0.0),
    sa.Column("cost_n", sa.Integer, nullable=False, default=0),
)

request_texts = sa.Table(
    "request_texts",
    metadata,
    # Version 15: the text of each request a phase sent, once, under an id that every tier's answer to it shares
    # (the first prompt, without the model or a retry's note), for the per-request router (tierflow.learn).
    sa.Column("request_id", String(64), primary_key=True),
    sa.Column("flow", String(64)),
    sa.Column("phase", String(64)),
    sa.Column("text", Text, nullable=False),
    sa.Column("created", String(32)),
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
    "worst_tokens",
)
"""Columns of `calls` that migrations after the first add (5; 7 for attribution, 15, 19)."""
_CACHE_ADDED_IN_5 = ("flow", "phase", "request_json")
_CACHE_ADDED_FOR_KEPT = ("kept", "checks_failed", "tier")


def _migration_1(conn: Connection) -> None:
    _as_created(calls, _CALLS_ADDED_IN_5).create(conn, checkfirst=True)
    _as_created(response_cache, _CACHE_ADDED_IN_5 + _CACHE_ADDED_FOR_KEPT).create(conn, checkfirst=True)


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
    later = ("downgraded_from", *_BATCH_ITEMS_ADDED_IN_10, "error", "seen")
    _as_created(batch_items, later).create(conn, checkfirst=True)
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
    _as_created(signals, ("request_id",)).create(conn, checkfirst=True)
    _as_created(drafts, ("request_id",)).create(conn, checkfirst=True)


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


def _migration_11(conn: Connection) -> None:
    # Running budget totals (`budget_scopes`, `budget_totals`; a budget's scope is rebuilt from the calls the
    # first time a config names it, under the migration and budget locks). Settled reservations are no longer
    # kept: only those in flight, and those kept as charged (usage unknown), stay. Reports and project budgets
    # read a project's calls by time.
    budget_scopes.create(conn, checkfirst=True)
    budget_totals.create(conn, checkfirst=True)
    conn.execute(reservations.delete().where(reservations.c.open.is_(False), reservations.c.kept.is_(False)))
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_calls_project_timestamp ON calls (project, timestamp)")


def _migration_12(conn: Connection) -> None:
    # (helper "evidence") Every request a phase sends, passed or not (see `requests`).
    requests.create(conn, checkfirst=True)


def _migration_13(conn: Connection) -> None:
    # Answers kept without passing, remembered (as kept, not validated) so an unchanged rerun does not pay again.
    _add_columns(
        conn,
        "response_cache",
        {"kept": "BOOLEAN NOT NULL DEFAULT FALSE", "checks_failed": "VARCHAR(256)", "tier": "VARCHAR(64)"},
    )


_FIRST_ANSWER = (
    "{row}.cached_result = {false} AND {row}.attempt {mod} 2 = 1 AND {row}.outcome NOT IN ('lost', 'error') "
    "AND NOT ({row}.downgraded_from IS NOT NULL AND {row}.escalated_from IS NOT NULL)"
)
"""Which calls are routing evidence: each tier's first answer to a request, billed, neither lost nor failed in
tierflow's own handling (`error`), and not an escalation step a budget downgraded (`tierflow.core.evidence` says
why)."""
_EVIDENCE_KEYS = "flow, phase, complexity, project, tier"
_EVIDENCE_VALUES = (
    "COALESCE({row}.flow, ''), COALESCE({row}.phase, ''), COALESCE({row}.complexity, ''), "
    "COALESCE({row}.project, ''), COALESCE({row}.tier, '')"
)
_EVIDENCE_ADD = (
    "n = evidence_totals.n + excluded.n, passed = evidence_totals.passed + excluded.passed, "
    "cost_sum = evidence_totals.cost_sum + excluded.cost_sum, cost_n = evidence_totals.cost_n + excluded.cost_n"
)


def _migration_14(conn: Connection) -> None:
    # (helper "evidence") Routing evidence kept as grouped counts by a trigger on `calls`, filled once from the
    # calls already recorded; the trigger counts every call recorded from then on, in its own transaction.
    evidence_totals.create(conn, checkfirst=True)
    postgres = conn.dialect.name == "postgresql"
    false = "FALSE" if postgres else "0"
    mod = "%%" if postgres else "%"  # psycopg reads a lone % as a parameter
    conn.exec_driver_sql("DELETE FROM evidence_totals")
    conn.exec_driver_sql(
        f"INSERT INTO evidence_totals ({_EVIDENCE_KEYS}, n, passed, cost_sum, cost_n) "
        f"SELECT {_EVIDENCE_VALUES.format(row='calls')}, COUNT(*), SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END), "
        "COALESCE(SUM(cost_usd), 0), COUNT(cost_usd) FROM calls "
        f"WHERE {_FIRST_ANSWER.format(row='calls', false=false, mod=mod)} GROUP BY 1, 2, 3, 4, 5"
    )
    upsert = (
        f"INSERT INTO evidence_totals ({_EVIDENCE_KEYS}, n, passed, cost_sum, cost_n) "
        f"VALUES ({_EVIDENCE_VALUES.format(row='NEW')}, 1, CASE WHEN NEW.outcome = 'ok' THEN 1 ELSE 0 END, "
        "COALESCE(NEW.cost_usd, 0), CASE WHEN NEW.cost_usd IS NULL THEN 0 ELSE 1 END) "
        f"ON CONFLICT ({_EVIDENCE_KEYS}) DO UPDATE SET {_EVIDENCE_ADD}"
    )
    when = _FIRST_ANSWER.format(row="NEW", false=false, mod=mod)
    if postgres:
        conn.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION tierflow_count_evidence() RETURNS trigger AS $$ BEGIN "
            f"IF {when} THEN {upsert}; END IF; RETURN NULL; END $$ LANGUAGE plpgsql"
        )
        conn.exec_driver_sql("DROP TRIGGER IF EXISTS calls_count_evidence ON calls")
        conn.exec_driver_sql(
            "CREATE TRIGGER calls_count_evidence AFTER INSERT ON calls FOR EACH ROW "
            "EXECUTE FUNCTION tierflow_count_evidence()"
        )
    else:
        conn.exec_driver_sql("DROP TRIGGER IF EXISTS calls_count_evidence")
        conn.exec_driver_sql(
            f"CREATE TRIGGER calls_count_evidence AFTER INSERT ON calls WHEN {when} BEGIN {upsert}; END"
        )


def _migration_15(conn: Connection) -> None:
    # Per-request routing (issue 22): each answer's request id, and each request's text once.
    _add_columns(conn, "calls", {"request_id": "VARCHAR(64)", "value": "FLOAT"})
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_calls_request_id ON calls (request_id)")
    request_texts.create(conn, checkfirst=True)


def _migration_16(conn: Connection) -> None:
    # Judge verdicts, edits and ratings linked to the request and tier of the answer they judge,
    # so the per-request router learns from them; links recovered for the rows already stored where the ledger
    # can tell (`recover_signal_links`).
    _add_columns(conn, "signals", {"request_id": "VARCHAR(64)"})
    _add_columns(conn, "drafts", {"request_id": "VARCHAR(64)"})
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_signals_request_id ON signals (request_id)")
    recover_signal_links(conn)


def _answered(conn: Connection, *, run_id: str | None, phase: str | None, tier: str | None, subject: str) -> str | None:
    """The request id of the answers a run gave on a tier to the one request with this subject, if exactly one."""
    if not run_id:
        return None
    found = conn.execute(
        sa.select(calls.c.request_id)
        .where(
            calls.c.run_id == run_id,
            calls.c.phase == phase,
            calls.c.tier == tier,
            calls.c.subject == subject[:256],
            calls.c.request_id.is_not(None),
        )
        .distinct()
        .limit(2)
    ).all()
    return found[0][0] if len(found) == 1 else None


_TRIAL_SUBJECT = re.compile(r"^trial (\S+) against ")
"""A judge signal's subject (`tierflow.learn.trial`): `trial <sample> against <reference tier>`; the candidate's
calls in the trial run have the subject `trial <sample> on <tier>`."""


def recover_signal_links(conn: Connection) -> int:
    """Link stored drafts and signals to the request their answer was to, where the ledger can tell; returns how
    many rows it linked.

    A draft (and its `edit` and `rating` signals) names its run, phase, tier and subject (the note's title), and the
    draft call has the same subject: the run's one request of that phase, tier and subject is it. A `judge` signal
    names the trial run, phase and candidate tier, and its subject the sample, which the candidate's calls name.
    Nothing is linked when the calls carry no request id (recorded before version 15), when the draft's answer came
    from the answer cache (a cached row has no request id) or when the run had two requests of that subject.
    """
    linked = 0
    for d in conn.execute(sa.select(drafts).where(drafts.c.request_id.is_(None))).all():
        found = _answered(conn, run_id=d.run_id, phase=d.phase, tier=d.tier, subject=d.subject or "")
        if found:
            conn.execute(drafts.update().where(drafts.c.note == d.note).values(request_id=found))
            linked += 1
    waiting = sa.select(signals).where(signals.c.request_id.is_(None), signals.c.kind.in_(("edit", "rating", "judge")))
    draft_of = {d.note: d for d in conn.execute(sa.select(drafts).where(drafts.c.request_id.is_not(None))).all()}
    for s in conn.execute(waiting).all():
        found = None
        if s.kind == "judge":
            sample = _TRIAL_SUBJECT.match(s.subject or "")
            if sample:
                subject = f"trial {sample.group(1)} on {s.tier}"
                found = _answered(conn, run_id=s.run_id, phase=s.phase, tier=s.tier, subject=subject)
        else:
            d = draft_of.get(s.note or "")
            if d is not None and (d.run_id, d.tier) == (s.run_id, s.tier):
                found = d.request_id
            else:
                found = _answered(conn, run_id=s.run_id, phase=s.phase, tier=s.tier, subject=s.subject or "")
        if found:
            conn.execute(signals.update().where(signals.c.id == s.id).values(request_id=found))
            linked += 1
    return linked


def _migration_17(conn: Connection) -> None:
    # `tierflow spend --by week|day` groups by (day, tier, provider, model): with this
    # index the database reads the calls in that order instead of sorting a million rows in a temporary B-tree
    # (on SQLite 2.0 s -> 0.9 s of CPU on a 1M-row ledger). `ledger_spend` writes the day as this very expression.
    conn.exec_driver_sql(
        'CREATE INDEX IF NOT EXISTS ix_calls_day_model ON calls (substr("timestamp", 1, 10), tier, provider, model)'
    )


def _migration_18(conn: Connection) -> None:
    # A reservation's route and whether it is a batch item's (see `reservations`).
    _add_columns(
        conn,
        "reservations",
        {
            "provider": "VARCHAR(64)",
            "model": "VARCHAR(128)",
            "complexity": "VARCHAR(16)",
            "batch": "BOOLEAN NOT NULL DEFAULT FALSE",
        },
    )


def _migration_19(conn: Connection) -> None:
    # A lost call's worst-case tokens (see `calls`). Rows recorded before have none: a rebuild counts them as 0
    # tokens, as it always did; the totals already kept count them.
    _add_columns(conn, "calls", {"worst_tokens": "INTEGER"})


def _migration_20(conn: Connection) -> None:
    # A refused batch item's error (see `batch_items`). Items refused before have none: the next run sends them once
    # more, as it always did, and remembers the refusal then.
    _add_columns(conn, "batch_items", {"error": "TEXT"})


def _migration_21(conn: Connection) -> None:
    # The batches listed before a batch was sent (see `batch_items`). A claim recorded before has none: a look for it
    # excludes only the batches the ledger knows, as it always did.
    _add_columns(conn, "batch_items", {"seen": "TEXT"})


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
    _migration_11,
    _migration_12,
    _migration_13,
    _migration_14,
    _migration_15,
    _migration_16,
    _migration_17,
    _migration_18,
    _migration_19,
    _migration_20,
    _migration_21,
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
    worst_tokens: int | None = None
    """A call of unknown usage (`lost`): the tokens its reservation held, counted against token budgets in place
    of the usage nobody knows (the `worst_tokens` column, outside the stable `COLUMNS`: the row's tokens are
    unknown, `usage_known = false`)."""

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


def lost_call(call: CallRecord, worst_usd: float | None, worst_tokens: int | None = None) -> CallRecord:
    """`call` as sent and never answered (a timeout, a reset connection, its process killed mid-call).

    The provider may have processed and billed it, and its usage is unknowable: it is recorded with outcome
    `lost`, usage unknown and its worst case as its cost (and, for token budgets, its worst-case tokens), so
    budgets count what it may have cost and `tierflow spend` shows it (as an upper bound) rather than nothing.
    """
    return replace(
        call, usage=UNKNOWN_USAGE, cost_usd=worst_usd, latency_ms=0.0, outcome="lost", worst_tokens=worst_tokens
    )


@dataclass(frozen=True)
class RequestRecord:
    """One request a phase sent, on one tier, and that tier's first answer's outcome (`Ledger.recorded_requests`)."""

    key: str
    """The request's content and tier, hashed: one row per request and tier."""
    tier: str
    request_key: str
    """The request's content (system, prompt, schema; flow and phase), hashed: the same on every tier."""
    timestamp: str
    run_id: str | None
    flow: str | None
    phase: str | None
    complexity: str | None
    project: str | None
    subject: str | None
    model: str | None
    """The `provider:model` that answered."""
    outcome: str
    checks_failed: str | None
    request_json: str
    checks_json: str | None
    """`[{"name": ..., "rebuild": [factory, arguments JSON] or null}, ...]`: the phase's checks."""


_WRITE = "tierflow_write"
"""Execution option that marks a connection's transaction as a write (see `Ledger.transaction`)."""

_engines: dict[tuple[str, int], Engine] = {}
_engines_lock = threading.Lock()

POOL_MARGIN = 4
"""Connections beyond one per worker: the flow's own thread, the lease renewers of budgets and tier slots."""


def pool_size(workers: int) -> int:
    """The ledger connections a process running `workers` task runs at once keeps open: one each, plus a margin."""
    return workers + POOL_MARGIN


class WriterGate:
    """The process-local gate of this process's SQLite write transactions on one ledger, held by one at a time.

    An `urgent` transaction goes ahead of every ordinary one waiting: the one before a model call (its reservation
    and tier slot) does not queue behind the settlements of calls that have answered. When a wave of calls
    answered together, the next calls' claims waited behind their settlements (a 90th percentile of 20-80 ms idle
    per freed slot on an idle machine, `benchmarks/tier_throughput.py`). A settlement is off any call's path once
    its slot has been handed on; it waits at most for the urgent transactions that arrive before it commits, as
    many as this process's calls that can start at once. Within each kind, the longest waiting is woken first.

    A thread that finds the gate free takes it at once (unless it is ordinary and an urgent one waits): the gate
    is never reserved for a woken thread that has yet to run, which cost each hand-over a thread switch (the
    median idle gap doubled when it was). The thread that holds the gate may enter it again (as an `RLock`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._urgent = threading.Condition(self._lock)
        self._ordinary = threading.Condition(self._lock)
        self._owner: int | None = None
        self._depth = 0
        self._waiting = [0, 0]
        """Urgent and ordinary transactions waiting now."""

    def waiting(self) -> tuple[int, int]:
        """How many urgent and ordinary transactions wait now."""
        with self._lock:
            return self._waiting[0], self._waiting[1]

    @contextmanager
    def held(self, *, urgent: bool = False) -> Iterator[None]:
        """Hold the gate: at once if it is free (and, for an ordinary transaction, no urgent one waits)."""
        me = threading.get_ident()
        kind, condition = (0, self._urgent) if urgent else (1, self._ordinary)
        with self._lock:
            if self._owner != me:
                self._waiting[kind] += 1
                try:
                    while self._owner is not None or (not urgent and self._waiting[0]):
                        condition.wait()
                except BaseException:  # interrupted while waiting: a wake-up meant for it goes to the next
                    self._waiting[kind] -= 1
                    if self._owner is None:
                        self._wake()
                    raise
                self._waiting[kind] -= 1
                self._owner = me
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if not self._depth:
                    self._owner = None
                    self._wake()

    def _wake(self) -> None:
        """Wake one waiter, the longest waiting of the kind served first (with the lock held). One that arrives
        meanwhile may take the gate before it; the woken one then waits again for the next release."""
        (self._urgent if self._waiting[0] else self._ordinary).notify()


_writer_gates: dict[str, WriterGate] = {}


def writer_gate(url: str) -> WriterGate:
    """The process-local gate that this process's SQLite write transactions on `url` take in turn."""
    with _engines_lock:
        return _writer_gates.setdefault(url, WriterGate())


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


def close_ledgers(*, wait: bool = True) -> None:
    """At exit: close this process's pooled ledger connections. SQLite's last close then writes the write-ahead log
    into the ledger file and removes it; left open, the calls of a short command or a run stayed in the -wal file
    alone, and a ledger.sqlite copied or shared without it was missing them (or empty).

    Not `wait`: from a signal handler, which may have interrupted this thread holding the lock; then, if it did, the
    connections are left (the calls are in the -wal file, which the next open of the ledger writes into it)."""
    if not _engines_lock.acquire(blocking=wait):
        return
    try:
        engines = list(_engines.values())
    finally:
        _engines_lock.release()
    for engine in engines:
        engine.dispose()


atexit.register(close_ledgers)


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
        # No checkpoint inside a commit: `_Checkpointer` runs them in the background (file ledgers only).
        cursor.execute(f"PRAGMA wal_autocheckpoint={0 if path and path != ':memory:' else 1000}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write transaction (`Ledger.transaction`) takes the write lock up front with IMMEDIATE, so
        # read-check-write sequences (budget reservations) cannot interleave across threads or processes.
        # Every other transaction is a read: a plain BEGIN, which under WAL neither waits for a writer
        # nor holds one up, however long it runs (a `tierflow spend` over a large ledger).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


CHECKPOINT_EVERY = 64
"""Write transactions of this process between two background checkpoints of a SQLite ledger's WAL (a call writes
two, about 27 pages; SQLite's own automatic checkpoint comes every 1000 pages)."""


class _Checkpointer:
    """Checkpoints one SQLite ledger's write-ahead log from a background thread, every `CHECKPOINT_EVERY` writes.

    Left to SQLite, the commit that takes the log past 1000 pages copies it into the database and syncs the
    file, inside its write transaction: this process's other writers queue behind it. A 40-call phase takes the
    log past 1000 pages in its last wave; in one run a settlement there took 0.58 s inside its transaction, most
    likely that checkpoint on a busy disk, and the phase's end waited (`benchmarks/tier_throughput.py`, 1.21x
    against 1.05-1.08x in the same window). A PASSIVE checkpoint here takes no write lock: writers go on
    appending to the log meanwhile.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.commits = 0
        self.done = 0
        """Checkpoints run so far."""
        self._due = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def committed(self) -> None:
        """A write transaction has committed."""
        with self._lock:
            self.commits += 1
            if self.commits % CHECKPOINT_EVERY:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tierflow-ledger-checkpoint", daemon=True)
                self._thread.start()
        self._due.set()

    def _run(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            try:
                raw = self.engine.raw_connection()
                try:  # outside any transaction (the connection is in autocommit), as a checkpoint must be
                    raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                finally:
                    raw.close()
            except Exception:  # a busy or vanished ledger: the next one tries again
                pass
            with self._lock:
                self.done += 1


_checkpointers: dict[str, _Checkpointer] = {}


def checkpointer(url: str, engine: Engine) -> _Checkpointer:
    """The background checkpointer of the SQLite ledger at `url` in this process."""
    with _engines_lock:
        return _checkpointers.setdefault(url, _Checkpointer(engine))


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


def unopenable(url: str, exc: Exception) -> str:
    """Why the ledger at `url` cannot be used, naming it (a file, or the URL with its password masked) and the fix
    that fits the cause when it is one tierflow recognises."""
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:  # not printed: an unparsable URL may hold a password
        return f"ledger_url is not a database URL ({cause}): write it as {URL_FORMS}"
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if isinstance(exc, sa.exc.OperationalError):  # cannot open or write it: the folder, permissions, a lock
            return f"the ledger {parsed.database} cannot be opened ({cause}): check that its folder is writable"
        return (
            f"the ledger {parsed.database} cannot be read ({cause}): the file is not a tierflow ledger or is "
            "damaged. Move it aside (tierflow starts a new ledger there) or set ledger_url to another"
        )
    return f"the ledger at {masked_url(url)} cannot be used ({cause}): {connection_advice(cause)}"


def unreachable(url: str, exc: BaseException, away_s: float = 0.0) -> str:
    """Why the ledger at `url`, reached before, cannot be reached now (`away_s`: for how long it has been away),
    naming it as `unopenable` does (its file, or its URL with the password masked) and the cause."""
    if away_s < 1:
        return unopenable(url, exc)
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    file = sqlite_file(url)
    return (
        f"the ledger {_named(url)} could not be reached for {away_s:.0f} s ({cause}): check that its "
        f"{'folder is there and writable' if file is not None else 'server is up and ledger_url is right'}"
    )


_SQLITE_AWAY = frozenset(
    {
        14,  # CANTOPEN: its folder is not there now (an unmounted or disconnected network or synced folder)
        15,  # PROTOCOL: the file's locks were taken from under it (a network file system)
        10 | 1 << 8,  # IOERR_READ
        10 | 2 << 8,  # IOERR_SHORT_READ: the file shrank or vanished under a read
        10 | 7 << 8,  # IOERR_FSTAT
        10 | 8 << 8,  # IOERR_UNLOCK
        10 | 9 << 8,  # IOERR_RDLOCK
        10 | 13 << 8,  # IOERR_ACCESS
        10 | 14 << 8,  # IOERR_CHECKRESERVEDLOCK
        10 | 15 << 8,  # IOERR_LOCK
        10 | 27 << 8,  # IOERR_VNODE: the file was replaced or removed under the connection
    }
)
"""SQLite's (extended) result codes that say the file cannot be reached now: it could not be opened, read, looked
at or locked, as when the network or synced folder it is in went away. The other I/O errors (writing, syncing,
truncating, growing a file, memory) say the disk is full, over a quota or failing (`disk_trouble`): a wait would not
mend them."""
_SQLITE_DISK = frozenset({10, 13})
"""SQLite's primary result codes of a disk that will not take the ledger's writes: IOERR (but `_SQLITE_AWAY`'s) and
FULL."""
_SERVER_AWAY = ("08", "57P")
"""SQLSTATE prefixes that say the server went away, not that a statement failed: connection exceptions (08), and
an administrator's or a crash's shutdown, or a server still starting (57P01-57P03)."""


def lost_connection(error: BaseException, *, connecting: bool = False) -> bool:
    """Whether `error` says the ledger's database cannot be reached now (a restart, a failover, the network), as
    opposed to a statement it refused (a constraint, a missing column, bad SQL, a deadlock), a disk it cannot write
    (`disk_trouble`), or a client's own complaint (too many parameters), which a wait would not mend.

    `connecting`: `error` was raised making a connection, where a driver that could not reach the server gives no
    SQLSTATE (a refused or timed-out connection, a server shutting down)."""
    if isinstance(error, LedgerUnreachable):
        return True
    if not isinstance(error, sa.exc.DBAPIError):
        return False
    if error.connection_invalidated:  # the driver found its connection closed or broken (SQLAlchemy's is_disconnect)
        return True
    if not isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return False
    orig = error.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)  # none on an error that SQLite itself did not raise
        return code in _SQLITE_AWAY
    # The server's SQLSTATE (psycopg 3, psycopg2).
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return str(state).startswith(_SERVER_AWAY) if state else connecting


def disk_trouble(error: BaseException) -> bool:
    """Whether `error` says SQLite could not write the ledger's file to its disk: full, over a quota or a file size
    limit (SQLITE_IOERR_WRITE), failing (an fsync or a truncate that failed), or out of memory."""
    orig = getattr(error, "orig", None) if isinstance(error, sa.exc.DBAPIError) else None
    code = getattr(orig, "sqlite_errorcode", None) if isinstance(orig, sqlite3.Error) else None
    return code is not None and code & 0xFF in _SQLITE_DISK and not lost_connection(error)


def disk_refused(url: str, error: BaseException) -> str:
    """The one line that says the ledger's disk would not take a write (`disk_trouble`), naming the file and the
    cause."""
    orig = getattr(error, "orig", None) or error
    name = getattr(orig, "sqlite_errorname", None)
    cause = str(orig).strip().splitlines()[0] + (f", {name}" if name else "")
    return (
        f"the ledger {_shown(url)} could not be written ({cause}): its disk may be full, over a quota or failing: "
        "free space on it, or set ledger_url to a ledger on another disk"
    )


_SQLITE_CONTENDED = frozenset({5, 6})
"""SQLite's BUSY and LOCKED: another connection held the file or a table past the busy timeout."""
_SERVER_CONTENDED = frozenset({"40001", "40P01"})
"""SQLSTATEs of a transaction the server rolled back for another's sake: a serialisation failure, a deadlock."""


def contended(error: BaseException) -> bool:
    """Whether `error` says the database rolled the transaction back because another held what it needed (a deadlock,
    a busy SQLite file): the same transaction, tried again, goes through; there is nothing to wait for."""
    if not isinstance(error, sa.exc.DBAPIError):
        return False
    orig = error.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _SQLITE_CONTENDED
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)) in _SERVER_CONTENDED


OUTAGE_DELAYS = (0.05, 2.0)
"""The shortest and the longest sleep between two tries at a ledger that went away: a quarter of the time it has
been away, within these bounds (seconds)."""


class Outage:
    """One ledger's reachability as this process sees it (`Ledger.outage`).

    A ledger that this process reached and then lost (a database restart, a failover, the network) is waited for
    by each loop that tries a transaction again (`trying`), until `patience_s` (the config's `ledger_outage_s`) has
    passed since that loop's first failure, or since the outage's first failure if that came earlier: from then on
    every try that fails gives up at once, until a write reaches the ledger again. Another thread's write that goes
    through meanwhile (a lease renewal) ends the outage, never a loop's patience: a write that keeps failing ends
    within `patience_s` whatever the others do. The first failure of an outage says so in one log line, and the
    first write that reaches the ledger again says it is back: never a line per try. A ledger never reached is not
    waited for: a wrong URL, or a server that is not there, is reported at once."""

    def __init__(self, url: str, patience_s: float) -> None:
        self.url = url
        self.patience_s = patience_s
        self.sleep: Callable[[float], None] = time.sleep
        self.monotonic: Callable[[], float] = time.monotonic
        """The wait's sleep and clock: a test replaces them, so that it never waits on the wall clock."""
        self.reached = False
        """This process has reached the ledger (a connection was made)."""
        self._since: float | None = None
        self._lock = threading.Lock()
        self._loop = threading.local()
        """This thread's outermost `trying` loop: `since`, its first failure (None before it)."""

    @contextmanager
    def trying(self) -> Iterator[None]:
        """A loop that tries a transaction again while the ledger is away (`wait`): its patience runs from its own
        first failure. The loops nested in it (the transaction's connection, `Ledger._connect`) share it."""
        outermost = not hasattr(self._loop, "since")
        if outermost:
            self._loop.since = None
        try:
            yield
        finally:
            if outermost:
                del self._loop.since

    def wait(self, error: BaseException) -> float:
        """`error` says the ledger cannot be reached (`lost_connection`): sleep a while before the next try of this
        thread's `trying` loop, and return the seconds slept; or raise LedgerUnreachable when the ledger was never
        reached, or the loop (or the outage) has waited `patience_s` since its first failure."""
        if not hasattr(self._loop, "since"):
            raise RuntimeError("Outage.wait outside Outage.trying: its patience would have no start")
        if isinstance(error, LedgerUnreachable) and error.__cause__ is not None:
            error = error.__cause__  # a transaction's own LedgerUnreachable: the driver's error names the cause
        if not self.reached:
            raise LedgerUnreachable(unopenable(self.url, error)) from error
        now = self.monotonic()
        with self._lock:
            first = self._since is None
            outage = self._since = now if self._since is None else self._since
        if self._loop.since is None:
            self._loop.since = now
        since = min(self._loop.since, outage)
        away = now - since
        if away >= self.patience_s:
            gone = LedgerUnreachable(unreachable(self.url, error, away))
            gone.gave_up = True
            raise gone from error
        if first:
            cause = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
            log.warning(
                "the ledger %s went away (%s); waiting up to %g s for it to come back, the answers in flight kept",
                _named(self.url), cause, self.patience_s,
            )  # fmt: skip
        low, high = OUTAGE_DELAYS
        seconds = max(0.0, min(max(low, away / 4), high, since + self.patience_s - now))
        self.sleep(seconds)
        return seconds

    def back(self) -> None:
        """A write transaction on the ledger went through: it is reachable (again). A connection alone does not say
        so (a server on its way down may still take one), nor a read (a disk may still refuse the writes). The
        patience of this thread's `trying` loop starts again at its next failure."""
        if getattr(self._loop, "since", None) is not None:
            self._loop.since = None
        if self._since is None:
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.warning("the ledger %s is back after %.0f s", _named(self.url), self.monotonic() - since)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite ledger URL; None for another database or an in-memory one."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _named(url: str) -> str:
    """The ledger as a sentence names it: its file, or "at" its URL with the password hidden."""
    return str(sqlite_file(url) or f"at {_shown(url)}")


def _shown(url: str) -> str:
    """The ledger as a message names it: its file, or its URL with the password hidden."""
    file = sqlite_file(url)
    return str(file) if file is not None else masked_url(url)


def read_only_reason(file: Path) -> str | None:
    """Why this user cannot write the SQLite ledger `file` (or make it), or None when they can.

    Asked of the file system before SQLite is: SQLite quietly opens a file it cannot write read-only, and a WAL
    ledger then fails on its first read where it cannot make its -shm file beside it."""
    if file.exists() and not os.access(file, os.W_OK):
        return unwritable(file.parent) or "its file is read-only to you"
    return unwritable(file.parent)  # SQLite makes its -wal and -shm files beside the ledger


def cannot_record(where: str, why: str, *, server: bool = False) -> str:
    """The one line that refuses a command that records in a ledger its user may only read (`server`: a database
    server's, which its role's privileges make read-only; else a SQLite file)."""
    fix = (
        "run it as a database role that may write (INSERT, UPDATE and DELETE on the ledger's tables)"
        if server
        else "run it with write access to the ledger file and its folder"
    )
    return (
        f"the ledger {where} is read-only here ({why}), and this command records in it: {fix}, or set ledger_url "
        "to a ledger you can write"
    )


def no_ledger_yet(file: Path) -> str:
    """The one line that ends a report on a SQLite ledger that does not exist (`NoLedger`): nothing is made for it."""
    return (
        f"there is no ledger yet at {file}, so no calls are recorded there: run a flow first (`tierflow run FLOW "
        "--vault VAULT`), or check --vault and --config (ledger_url) name the ledger you meant"
    )


def needs_migration(where: str, current: int, why: str) -> str:
    """The one line that refuses to read a ledger its user cannot bring to this tierflow's schema."""
    if current == 0:
        return (
            f"the ledger {where} holds no tierflow tables, and it is read-only here ({why}): check --vault or "
            "ledger_url (a SQLite ledger copied without its -wal file may look empty)"
        )
    return (
        f"the ledger {where} is at schema version {current} and this tierflow reads version {len(MIGRATIONS)}; it is "
        f"read-only here ({why}), so it cannot be updated: someone with write access must open it once with this "
        "tierflow (any command, such as `tierflow spend`), or read it with the tierflow that wrote it"
    )


def _schema_version(conn: Connection) -> int:
    """The ledger's schema version: the last migration recorded, 0 for a database without tierflow's tables."""
    if not sa.inspect(conn).has_table(schema_version.name):
        return 0
    return conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0


def _role_may_write(conn: Connection) -> bool:
    """Whether this PostgreSQL role may record in the ledger (or, on a new database, create its tables)."""
    return bool(
        conn.exec_driver_sql(
            "SELECT COALESCE(has_table_privilege(to_regclass('calls'), 'INSERT'), "
            "has_schema_privilege(current_schema(), 'CREATE'))"
        ).scalar()
    )


def _read_only_engine(url: str, file: Path) -> Engine:
    """The engine that reads the SQLite ledger `file` for a user who cannot write it (`_read_only_connection`).

    Not pooled: each read opens a connection of its own, chosen for the files beside the ledger at that moment
    (a writer may have opened it since: `tierflow spend --watch` then reads through its log)."""
    with _engines_lock:
        engine = _engines.get((url, 0))  # 0: no pool size, the read-only engine
        if engine is None:
            engine = sa.create_engine(url, creator=lambda: _read_only_connection(file), poolclass=sa.pool.NullPool)
            sa.event.listen(engine, "connect", _on_read_only_connect)
            sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
            _engines[(url, 0)] = engine
        return engine


class LedgerChanged(LedgerError):
    """A writer wrote into a SQLite ledger file while a user who cannot write it read it `immutable`
    (`_read_only_connection`): what was read may mix two moments, so it is not used. `Ledger.read` reads again."""


def _file_state(file: Path) -> tuple[int, ...] | None:
    """The ledger file's inode, size, and modification and change times: a writer's checkpoint into it changes them."""
    try:
        found = file.stat()
    except OSError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)


def _beside(file: Path) -> tuple[bool, bool, bool]:
    """Whether the ledger's -wal file is there, whether it holds changes, and whether its -shm file is there."""
    try:
        changes = Path(f"{file}-wal").stat().st_size > 0
        wal = True
    except OSError:  # none, or gone as its writer closed
        changes = wal = False
    return wal, changes, Path(f"{file}-shm").exists()


class _ReadOnlySQLite(sqlite3.Connection):
    """A connection of `_read_only_connection`. `file_state` is the ledger file's `_file_state` when it was opened
    `immutable`, else None."""

    file: Path
    file_state: tuple[int, ...] | None = None

    def written_since_opened(self) -> bool:
        """Whether a writer may have written into the ledger file since this `immutable` connection opened it."""
        return self.file_state is not None and _file_state(self.file) != self.file_state


READ_ONLY_OPENS = 20
"""Tries at opening a SQLite ledger read-only while its writers' -wal and -shm files come and go
(`_read_only_connection`)."""


def _read_only_connection(file: Path) -> _ReadOnlySQLite:
    """A connection that reads the SQLite ledger `file` and writes nothing, in it or beside it.

    A ledger a writer has open (or left with changes not yet in its file) has a -wal and a -shm file beside it:
    it is read through them (`mode=ro`), and SQLite keeps this reader's snapshot from its writers' checkpoints as
    it does any reader's (https://www.sqlite.org/wal.html#readonly). Without them no writer has it open and the file
    holds every call, but SQLite can then read a WAL ledger only as `immutable`: it may not make the -shm file, and
    without one it can neither open the log nor tell a writer it is reading (`mode=ro`, `nolock`, the `unix-excl` and
    `unix-none` VFSes and `locking_mode=EXCLUSIVE` all fail on a read-only folder). A writer that opens the ledger
    meanwhile writes to its own log; only its checkpoints (every 64 write transactions, and as it closes) write into
    the file under an `immutable` reader, which SQLite does not notice. So such a connection remembers the file's
    state (`_ReadOnlySQLite.file_state`), and `Ledger.reading` refuses what it read if the file changed meanwhile.

    The files beside the ledger change as writers open and close it (one removes its -shm file just before its -wal
    file): a connection that finds them changed under it as it first reads is opened again. A -wal file with changes
    but no -shm (copied without it) is refused: a report would miss those calls."""
    for attempt in range(READ_ONLY_OPENS):
        last = attempt == READ_ONLY_OPENS - 1
        state, beside = _file_state(file), _beside(file)
        wal, changes, shm = beside
        if changes and not shm:
            if not last:
                time.sleep(0.01)
                continue
            raise LedgerError(
                f"the ledger {file} cannot be read here: its latest calls are in {file.name}-wal, which SQLite cannot "
                f"read without the {file.name}-shm file beside it. Copy the ledger with both files, or have its owner "
                "open it once with write access (any tierflow command), which writes them into the ledger file"
            )
        immutable = not (wal and shm)
        query = "immutable=1" if immutable else "mode=ro"
        conn: _ReadOnlySQLite | None = None
        try:
            conn = sqlite3.connect(
                f"{file.absolute().as_uri()}?{query}",
                uri=True,
                timeout=60,
                check_same_thread=False,
                factory=_ReadOnlySQLite,
            )
            conn.file, conn.file_state = file, state if immutable else None
            # A first read: `mode=ro` opens the -wal and -shm files here, and then holds the ledger's shared lock,
            # so that its last writer leaves them in place until this connection closes.
            conn.execute("PRAGMA schema_version").fetchone()
            return conn
        except sqlite3.Error:
            if conn is not None:
                conn.close()
            if last or (_file_state(file), _beside(file)) == (state, beside):
                raise  # not a writer opening or closing it: the error is the ledger's
    raise AssertionError("unreachable")


def _on_read_only_connect(dbapi_connection: Any, _record: Any) -> None:
    # As `_create_engine`'s connections: SQLAlchemy begins transactions (a plain BEGIN). `query_only`: should
    # anything try to write, SQLite refuses it before it reaches the file.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA query_only=1")
    cursor.close()


REREADS = 5
"""Reads `Ledger.read` makes while writers write into a SQLite ledger read `immutable` under them."""

_T = TypeVar("_T")

LISTING_PROCESSES = 2
"""Processes that write `tierflow spend --format json|jsonl` (`Ledger.stream_json`): a million calls in 2.1 s
against 3.7 s in one, on this project's 2-core machine; two threads took 4.4 s."""


class Ledger:
    """Where every call's spend is kept."""

    def __init__(self, url: str, *, workers: int | None = None, reading: bool = False, outage_s: float = 0.0) -> None:
        """`workers`: task runs of this process that use the ledger at once (`[run] workers`); sizes the pool.

        `outage_s`: once reached, how long a ledger that went away is waited for (a run's `ledger_outage_s`), by
        every transaction that cannot connect to it and by the callers that try again (`Outage`); 0 (a report, a
        command) gives up at once.

        `reading`: the caller only reads it (a report). A ledger its user cannot write (a SQLite file or folder
        without write permission, a read-only mount, a PostgreSQL role that may only SELECT) is then opened
        read-only, never migrated nor written (`writable` is False and `transaction` refuses), and must be at this
        tierflow's schema. Without `reading`, such a ledger is refused at once: a LedgerError naming it and the fix.
        """
        problem = ledger_url_problem(url)
        if problem:  # before SQLAlchemy loads a driver tierflow does not use (an ImportError, a traceback)
            raise LedgerError(f"ledger_url = {problem}")
        self.url = url
        self.outage = Outage(url, outage_s)
        self.writable = True
        """False: opened read-only for a report (`reading`); every write transaction is refused."""
        self._why_read_only = ""
        try:
            file = sqlite_file(url)
            self._file = file is not None
            """A SQLite file, whose write-ahead log `_Checkpointer` checkpoints."""
            if reading and file is not None and not file.exists():  # a report makes no ledger to read it
                raise NoLedger(no_ledger_yet(file))
            why = None if file is None else read_only_reason(file)
            if file is not None and why is not None:
                if not file.exists():
                    raise LedgerError(f"there is no ledger at {file}, and none can be made there ({why})")
                if not reading:
                    raise LedgerError(cannot_record(str(file), why))
                self._open_read_only(file, why)
                return
            self.engine = _engine(url, pool_size(workers or RunConfig().workers))
            self._writer = self.engine.execution_options(**{_WRITE: True})
            try:
                self._migrate(reading=reading)
            except sa.exc.OperationalError as exc:
                # Writable by its permissions, yet SQLite may not write it (a synced or network folder, a -wal
                # file of another user's): a report reads it read-only all the same.
                if file is None or "readonly" not in str(exc.orig).replace("-", ""):
                    raise
                if not reading:
                    raise LedgerError(cannot_record(str(file), "SQLite may not write it here")) from exc
                self._open_read_only(file, "SQLite may not write it here")
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, sa.exc.DBAPIError) as exc:
            raise LedgerError(unopenable(url, exc)) from exc

    @classmethod
    def for_vault(cls, vault: Path, *, reading: bool = False) -> Ledger:
        return cls(f"sqlite:///{(vault / '.tierflow' / 'ledger.sqlite').resolve()}", reading=reading)

    def _open_read_only(self, file: Path, why: str) -> None:
        """Read the SQLite ledger at `file`, which this user cannot write: only if it is at this tierflow's schema."""
        self.engine = _read_only_engine(self.url, file)
        self.writable, self._why_read_only = False, why
        current = self.read(_schema_version)
        if current < len(MIGRATIONS):
            raise LedgerError(needs_migration(str(file), current, why))

    def _migrate(self, *, reading: bool = False) -> None:
        """Bring the ledger to this tierflow's schema. Most opens find it there: they read its version and write
        nothing (no write lock, no advisory lock), so a report never waits for a writer's transaction to open it."""
        with self.reading() as conn:
            current = _schema_version(conn)
            may_write = conn.dialect.name != "postgresql" or _role_may_write(conn)
        where = _shown(self.url)
        if not may_write:
            why = "its database role may only read it"
            if current < len(MIGRATIONS):
                raise LedgerError(needs_migration(where, current, why))
            if not reading:
                raise LedgerError(cannot_record(where, why, server=True))
            self.writable, self._why_read_only = False, why
            return
        if current >= len(MIGRATIONS):
            return
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
    def transaction(self, *, urgent: bool = False) -> Iterator[Connection]:
        """A write transaction; on SQLite it holds the write lock from its start (`BEGIN IMMEDIATE`).

        On SQLite, threads of this process first queue at a process-local gate (`writer_gate`): the one that waits
        wakes the moment the writer before it commits. Left to SQLite's busy handler, a thread that finds the file
        locked sleeps 1, 2, 5 ... 100 ms between tries, and a freed tier slot sat idle that long (a waiter's median
        wait behind 4 ms writes was 7 ms, its 90th percentile 110 ms). Other processes still wait in SQLite.
        An `urgent` transaction (the one before a model call) goes ahead of the ordinary ones queued there.
        """
        if not self.writable:
            server = self.engine.dialect.name != "sqlite"
            raise LedgerError(cannot_record(_shown(self.url), self._why_read_only, server=server))
        gate = writer_gate(self.url) if self.engine.dialect.name == "sqlite" else None
        with ExitStack() as held:
            if gate is not None:
                held.enter_context(gate.held(urgent=urgent))
            with self._unreachable_named(), self._connect(self._writer) as conn, conn.begin():
                yield conn
        self.outage.back()
        if gate is not None and self._file:
            checkpointer(self.url, self.engine).committed()

    def _connect(self, engine: Engine) -> Connection:
        """A connection to the ledger. One that this process reached before and cannot reach now is tried again
        until it is back, or has been away `outage_s` (`Outage`): nothing of the transaction has run yet. The
        write transaction that goes through says it is back (`Outage.back`)."""
        with self.outage.trying():
            while True:
                try:
                    conn = engine.connect()
                except sa.exc.DBAPIError as exc:
                    if not lost_connection(exc, connecting=True):
                        raise
                    self.outage.wait(exc)
                    continue
                self.outage.reached = True
                return conn

    @contextmanager
    def _unreachable_named(self) -> Iterator[None]:
        """A transaction whose connection went away raises LedgerUnreachable, naming the ledger and the cause: a
        caller that can try it again does (`Outage.wait`); to the others it is a TierflowError, one line on the
        console, never a driver's traceback. One whose disk would not take its writes (`disk_trouble`) raises a
        LedgerError naming the file and the fix at once: no wait mends a full disk."""
        try:
            yield
        except sa.exc.DBAPIError as exc:
            if disk_trouble(exc):
                raise LedgerError(disk_refused(self.url, exc)) from exc
            if not lost_connection(exc):
                raise
            raise LedgerUnreachable(unopenable(self.url, exc)) from exc

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only transaction: plain, so it takes no write lock.

        On a SQLite ledger its user may only read, opened `immutable` as no writer had it open
        (`_read_only_connection`), it raises LedgerChanged if a writer wrote into the file before it ended: what
        was read may be wrong. `read` reads again instead."""
        with self._unreachable_named(), self._connect(self.engine) as conn:
            raw = conn.connection.driver_connection
            watched = isinstance(raw, _ReadOnlySQLite) and raw.file_state is not None
            try:
                with conn.begin():
                    yield conn
            except (sa.exc.DBAPIError, sqlite3.Error) as exc:  # `database disk image is malformed`, mid-checkpoint
                if watched and raw.written_since_opened():
                    raise LedgerChanged(self._changed()) from exc
                raise
            if watched and raw.written_since_opened():
                raise LedgerChanged(self._changed())

    def _changed(self) -> str:
        return (
            f"the ledger {_shown(self.url)} was written while it was read, so what was read may be wrong: a writer "
            "opened it meanwhile, and a reader that writes nothing beside the ledger has no -shm file, through which "
            "SQLite keeps a writer from changing what its readers read. Run it again."
        )

    def read(self, read: Callable[[Connection], _T]) -> _T:
        """`read(conn)` in a read transaction of its own (`reading`), made again should a writer write into a
        SQLite ledger read `immutable` under it (`LedgerChanged`): by then the writer has it open, and the next
        read goes through its log, or has closed it, and the file holds every call."""
        for attempt in range(REREADS):
            try:
                with self.reading() as conn:
                    return read(conn)
            except LedgerChanged:
                if attempt == REREADS - 1:
                    raise
        raise AssertionError("unreachable")

    def landed(self, call: CallRecord) -> bool:
        """Whether `call`'s row is in the ledger already: the transaction that wrote it lost its connection as it
        committed, which may have gone through all the same (its acknowledgement lost). Its run, timestamp (with
        microseconds), start, attempt and model identify it."""
        with self.reading() as conn:
            found = conn.execute(
                sa.select(calls.c.id).where(
                    calls.c.run_id == call.run_id,
                    calls.c.timestamp == call.timestamp,
                    calls.c.started_at == call.started_at,
                    calls.c.attempt == call.attempt,
                    calls.c.model == call.model,
                )
            ).first()
        return found is not None

    def record(self, call: CallRecord, *, conn: Connection | None = None) -> int:
        """Store one call, and add it to the running totals of the budget scopes it falls in; returns its row id."""
        if conn is None:
            with self.transaction() as own:
                return self.record(call, conn=own)
        row = call.row()
        # One compiled statement with bound parameters: far cheaper than `.values(**row)` on every call.
        row_id = conn.execute(calls.insert(), row).inserted_primary_key[0]
        tokens = sum(row[kind] for kind in TOKEN_KINDS)
        if not row["usage_known"] and call.worst_tokens:
            tokens = call.worst_tokens
        usd = row["cost_usd"]
        count_spend(
            conn,
            Spent(
                when=row["timestamp"],
                run_id=row["run_id"],
                flow=row["flow"],
                phase=row["phase"],
                tier=row["tier"],
                project=row["project"],
                usd=usd or 0.0,
                tokens=tokens,
                unpriced_tokens=tokens if usd is None and (row["usage_known"] or call.worst_tokens) else 0,
            ),
        )
        return row_id

    def rows(
        self,
        *,
        since: str | None = None,
        run_id: str | None = None,
        flow: str | None = None,
        project: str | None = None,
        last: int | None = None,
    ) -> list[dict[str, Any]]:
        """Ledger rows, oldest first, with the stable column names; with `last`, only the newest `last` of them."""
        query = sa.select(*[calls.c[name] for name in COLUMNS]).where(*_call_filters(since, run_id, flow, project))
        if last is not None:
            # The newest `last` by id (the primary key, read backwards), then oldest first like every listing.
            newest = query.order_by(calls.c.id.desc()).limit(last).subquery()
            query = sa.select(*[newest.c[name] for name in COLUMNS]).order_by(newest.c.id)
        else:
            query = query.order_by(calls.c.id)
        return self.read(lambda conn: [dict(zip(COLUMNS, row, strict=True)) for row in conn.execute(query)])

    def stream_rows(
        self,
        *,
        since: str | None = None,
        run_id: str | None = None,
        flow: str | None = None,
        project: str | None = None,
        batch: int = 2000,
        last: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """`rows`, one at a time, read `batch` ids at a time: a listing of a large ledger never holds it whole.

        As in `stream_json`, the ids are fixed when the listing starts and each piece is read in a transaction of
        its own, never held open while the listing's reader takes its time: under one held for the whole listing
        (`tierflow spend --format csv | less`), a SQLite ledger its user may only read, read `immutable`, could be
        written by a writer's checkpoint, and the listing failed halfway (`_read_only_connection`)."""
        filters = _call_filters(since, run_id, flow, project)
        bounds = self._id_bounds(filters, last)
        if bounds is None:
            return
        low, high = bounds
        piece_of = calls.c.id.between(sa.bindparam("first"), sa.bindparam("last"))
        query = sa.select(*[calls.c[name] for name in COLUMNS]).where(piece_of, *filters).order_by(calls.c.id)

        def piece(first: int) -> list[sa.Row[Any]]:
            params = {"first": first, "last": min(first + batch - 1, high)}
            return self.read(lambda conn: list(conn.execute(query, params).all()))

        for first in range(low, high + 1, batch):
            for row in piece(first):
                yield dict(zip(COLUMNS, row, strict=True))

    def _id_bounds(self, filters: list[sa.ColumnElement[bool]], last: int | None) -> tuple[int, int] | None:
        """The lowest and highest id of the calls a listing with these filters (and `last`) lists now; None if none."""
        ids = sa.select(calls.c.id).where(*filters)
        if last is not None:
            ids = ids.order_by(calls.c.id.desc()).limit(last)
        chosen = ids.subquery()
        low, high = self.read(
            lambda conn: conn.execute(sa.select(sa.func.min(chosen.c.id), sa.func.max(chosen.c.id))).one()
        )
        return None if low is None else (low, high)

    def count_calls(
        self,
        *,
        since: str | None = None,
        run_id: str | None = None,
        flow: str | None = None,
        project: str | None = None,
    ) -> int:
        """How many calls `rows` would list (counted on the database)."""
        query = sa.select(sa.func.count()).select_from(calls).where(*_call_filters(since, run_id, flow, project))
        return int(self.read(lambda conn: conn.execute(query).scalar()) or 0)

    def stream_json(
        self,
        *,
        between: str = "\n",
        since: str | None = None,
        run_id: str | None = None,
        flow: str | None = None,
        project: str | None = None,
        batch: int = 20_000,
        last: int | None = None,
        processes: int = 1,
    ) -> Iterator[str]:
        """The calls `stream_rows` lists, oldest first, each as one compact JSON object (`_row_json`), in pieces of
        up to `batch` ids joined by `between`; with `last`, only the newest `last`.

        The database writes each row's text, so Python holds one string a row, never a dict. With `processes` > 1
        (on Linux, for a database in a file or on a server), that many forked processes write the pieces at once,
        each on its own connection, and hand them over in order through a pipe, at most a piece ahead (memory stays
        flat): SQLite's JSON functions share one memory lock in a process, so threads contend where processes do
        not. Fork only from a process whose other threads hold no lock the listing needs (the CLI has none). Each
        piece is read in a transaction of its own; the ids are fixed when the listing starts, so a call recorded
        while it runs is left for the next listing."""
        filters = _call_filters(since, run_id, flow, project)
        bounds = self._id_bounds(filters, last)
        if bounds is None:
            return
        low, high = bounds
        dialect = self.engine.dialect.name
        # The listing's own filters, compiled once for the driver's cursor: the pieces are read through it.
        piece_of = [calls.c.id >= sa.bindparam("first"), calls.c.id <= sa.bindparam("last")]
        where = sa.and_(*piece_of, *filters).compile(dialect=self.engine.dialect)
        sql = _row_json(dialect).format(where=where.string)

        def piece(first: int) -> str:
            params = where.construct_params({"first": first, "last": min(first + batch - 1, high)})

            def read(conn: Connection) -> str:
                if dialect == "postgresql":
                    conn.exec_driver_sql("SET LOCAL extra_float_digits = 1")  # the shortest text that reads back exact
                cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                try:
                    cursor.execute(sql, params if where.positiontup is None else [params[k] for k in where.positiontup])
                    return between.join([text for (text,) in cursor.fetchall()])
                finally:
                    cursor.close()

            return self.read(read)

        starts = list(range(low, high + 1, batch))
        processes = min(processes, len(starts))
        if processes <= 1 or sys.platform != "linux" or self.engine.url.database in (None, "", ":memory:"):
            yield from filter(None, map(piece, starts))
            return
        writers: list[tuple[int, BinaryIO]] = []
        try:
            for k in range(processes):
                read, write = os.pipe()
                pid = os.fork()
                if pid == 0:  # the child: never returns into the caller's code
                    os.close(read)
                    for _, earlier in writers:  # else an earlier writer would never see its reader go
                        earlier.close()
                    _write_pieces(self.engine, piece, starts[k::processes], write)
                os.close(write)
                writers.append((pid, os.fdopen(read, "rb")))
            for i in range(len(starts)):
                if text := _read_piece(writers[i % processes][1]):
                    yield text
        finally:  # a reader that stops early (`| head`) closes the pipes: the writers end at their next piece
            for pid, pipe in writers:
                pipe.close()
                os.waitpid(pid, 0)

    def in_flight(self) -> list[dict[str, Any]]:
        """Budget reservations still open: the calls in flight now, in any process sharing this ledger."""
        columns = [reservations.c[c] for c in ("id", "created", "run_id", "flow", "phase", "project", "usd", "tokens")]
        query = sa.select(*columns).where(reservations.c.open.is_(True)).order_by(reservations.c.id)
        return self.read(lambda conn: [dict(row._mapping) for row in conn.execute(query)])

    def remember_run(self, run_id: str, flow: str, parameters: dict[str, Any]) -> None:
        """Keep a run's parameters, so `tierflow resume RUN` can run it again to collect its batches."""
        with self.transaction() as conn:
            if conn.execute(sa.select(runs.c.run_id).where(runs.c.run_id == run_id)).first() is None:
                conn.execute(
                    runs.insert().values(
                        run_id=run_id, flow=flow, parameters=json.dumps(parameters, default=str), created=now_iso()
                    )
                )

    def remember_run_parameters(self, run_id: str, values: dict[str, Any]) -> None:
        """Record what a run resolved for itself after it started (the window a run given no dates read, from the day
        it was due), so that `tierflow resume RUN` runs it with the same values, whatever day it is resumed."""
        with self.transaction() as conn:
            row = conn.execute(sa.select(runs.c.parameters).where(runs.c.run_id == run_id)).first()
            if row is None:
                return
            parameters = json.loads(row.parameters) | values
            conn.execute(
                runs.update().where(runs.c.run_id == run_id).values(parameters=json.dumps(parameters, default=str))
            )

    def run_parameters(self, run_id: str) -> tuple[str, dict[str, Any]] | None:
        with self.reading() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()
        return None if row is None else (row.flow, json.loads(row.parameters))

    def run_started(self, run_id: str) -> datetime | None:
        """When the run first started (`remember_run`, by tierflow's clock); None for a run the ledger does not know,
        or one an earlier tierflow remembered without that time. A resume keeps it."""
        with self.reading() as conn:
            created = conn.execute(sa.select(runs.c.created).where(runs.c.run_id == run_id)).scalar()
        try:
            return datetime.fromisoformat(created) if created else None
        except ValueError:
            return None

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

    def remember_request(self, record: RequestRecord, *, conn: Connection | None = None) -> None:
        """Keep a request a phase sent and its tier's first answer's outcome (the latest, if sent again)."""
        if conn is None:
            with self.transaction() as own:
                self.remember_request(record, conn=own)
            return
        _upsert(conn, requests, asdict(record), ["key", "tier"])

    def recorded_requests(
        self, *, flow: str | None = None, phase: str | None = None, tier: str | None = None
    ) -> list[RequestRecord]:
        """Every recorded request (oldest first), one per request and tier reached, with that tier's first outcome.

        The request as first sent is `json.loads(r.request_json)` (`tierflow.core.providers.Request`'s fields);
        `r.request_key` is the same for every tier of one request; `r.outcome` is `ok` when the tier's first answer
        passed validation and the phase's checks.
        """
        query = sa.select(requests).order_by(requests.c.timestamp, requests.c.key)
        for column, value in (("flow", flow), ("phase", phase), ("tier", tier)):
            if value is not None:
                query = query.where(requests.c[column] == value)
        with self.reading() as conn:
            return [RequestRecord(**row._mapping) for row in conn.execute(query)]

    def remember_kept(
        self, key: str, *, model: str, tier: str, text: str, data: dict[str, Any] | None, checks_failed: str,
        flow: str, phase: str,
    ) -> None:  # fmt: skip
        """Remember the answer a request ended with, for that request: one kept although no tier passed (as
        kept, never as validated), or one that passed only on a retry or a dearer tier (no `checks_failed`)."""
        values = {
            "key": key, "model": model, "tier": tier, "text": text,
            "data_json": json.dumps(data) if data is not None else None, "created": now_iso(), "flow": flow,
            "phase": phase, "request_json": None, "kept": True, "checks_failed": checks_failed,
        }  # fmt: skip
        with self.transaction() as conn:
            _upsert(conn, response_cache, values, ["key"])

    def kept_response(self, key: str, *, conn: Connection | None = None) -> dict[str, Any] | None:
        """The kept answer remembered for a request: model, tier, text, data and the checks it failed."""
        query = sa.select(
            response_cache.c.model, response_cache.c.tier, response_cache.c.text, response_cache.c.data_json,
            response_cache.c.checks_failed,
        ).where(response_cache.c.key == key, response_cache.c.kept.is_(True))  # fmt: skip
        if conn is not None:
            row = conn.execute(query).first()
        else:
            with self.reading() as own:
                row = own.execute(query).first()
        if row is None:
            return None
        return {**row._mapping, "data": json.loads(row.data_json) if row.data_json else None}

    def remember_cut_off(
        self, key: str, *, run_id: str, cause: str, model: str, tier: str, flow: str, phase: str
    ) -> None:
        """Remember a request whose answers were all cut off at the output limits of the config (`key`:
        `Caller._cut_off_key`), the run that paid for them and why: a rerun at the same limits fails it at once.
        Kept in the answer cache as a kept entry with no answer (`checks_failed` "cut off"), never replayed."""
        values = {
            "key": key, "model": model, "tier": tier, "text": "", "created": now_iso(), "flow": flow, "phase": phase,
            "data_json": json.dumps({"run_id": run_id, "cause": cause}), "request_json": None, "kept": True,
            "checks_failed": CUT_OFF,
        }  # fmt: skip
        with self.transaction() as conn:
            _upsert(conn, response_cache, values, ["key"])

    def cut_off_response(self, key: str, *, conn: Connection | None = None) -> dict[str, Any] | None:
        """The run that paid for a request's cut-off answers and why (`remember_cut_off`), if one did."""
        query = sa.select(response_cache.c.data_json).where(
            response_cache.c.key == key, response_cache.c.kept.is_(True), response_cache.c.checks_failed == CUT_OFF
        )
        if conn is not None:
            row = conn.execute(query).first()
        else:
            with self.reading() as own:
                row = own.execute(query).first()
        return None if row is None or not row.data_json else json.loads(row.data_json)

    def forget_kept(self, key: str) -> None:
        """Drop a request's kept answer (a later run resolved it again)."""
        with self.transaction() as conn:
            conn.execute(response_cache.delete().where(response_cache.c.key == key, response_cache.c.kept.is_(True)))

    def remember_request_text(self, request_id: str, text: str, *, flow: str, phase: str, conn: Connection) -> None:
        """Keep a request's text once, under the id its answers carry (`calls.request_id`)."""
        values = {"request_id": request_id, "flow": flow, "phase": phase, "text": text, "created": now_iso()}
        _upsert(conn, request_texts, values, ["request_id"])

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

    def remember_output_mode(self, provider: str, model: str, mode: str, *, conn: Connection | None = None) -> None:
        """Remember the structured-output form `provider`'s `model` accepts (in the caller's transaction `conn`)."""
        if conn is None:
            with self.transaction() as own:
                self.remember_output_mode(provider, model, mode, conn=own)
            return
        values = {"provider": provider, "model": model, "mode": mode, "updated": now_iso()}
        _upsert(conn, output_modes, values, ["provider", "model"])


# A lookup on every call's path, built once with a bound parameter.
CUT_OFF = "cut off"
"""The `checks_failed` of an answer-cache entry that remembers a request cut off on every tier (`remember_cut_off`)."""

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


def insert_if_absent(conn: Connection, table: sa.Table, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING, in the connection's dialect: whether the row went in. False when a row
    with its key is there; on PostgreSQL also when another transaction was writing one, which this waits for."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    # By what it returns, not its rowcount: SQLAlchemy reports -1 for an INSERT's on psycopg.
    statement = insert(table).values(values).on_conflict_do_nothing().returning(*table.primary_key.columns)
    return conn.execute(statement).first() is not None


GROUPS = ("phase", "tier", "model", "flow", "day", "week", "month", "run_id", "project", "deployment", "value")


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


# Running budget totals (version 11). A budget's scope is its period, the vault's time zone and its filters; each
# call recorded (and each reservation kept as charged) adds to the totals of every registered scope it falls in,
# for the period its timestamp falls in, in the transaction that records it. A budget check then reads one row.

BUDGET_LOCK = 7263544501
"""PostgreSQL advisory lock key held by budget reservations, settlements and totals (SQLite's write lock does it)."""


def lock_budgets(conn: Connection) -> None:
    """Serialise budget checks and the writes they read: SQLite's `BEGIN IMMEDIATE` already does; PostgreSQL
    takes a transaction-scoped advisory lock."""
    if conn.dialect.name == "postgresql":
        # Once per transaction: a settlement takes it and then records the call, whose totals would ask again
        # (each a round trip).
        transaction = conn.get_transaction()
        if conn.info.get("tierflow_budget_lock") is not transaction:
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({BUDGET_LOCK})")
            conn.info["tierflow_budget_lock"] = transaction


def period_start(period: str, tz: ZoneInfo, now: datetime) -> str | None:
    """Start of the calendar period (`day`, `week` from Monday, `month`) holding `now`, in the time zone `tz`, as a
    UTC ISO timestamp (the ledger's format); None for `run`."""
    if period == "run":
        return None
    day = now.astimezone(tz).date()
    if period == "week":
        day = day - timedelta(days=day.weekday())
    elif period == "month":
        day = date(day.year, day.month, 1)
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    return start.astimezone(UTC).isoformat(timespec="microseconds")


def period_end(period: str, tz: ZoneInfo, start: str) -> datetime:
    """The end of the period that starts at `start` (the next one's start), in UTC."""
    day = datetime.fromisoformat(start).astimezone(tz).date()
    if period == "day":
        day += timedelta(days=1)
    elif period == "week":
        day += timedelta(days=7)
    else:
        day = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


@dataclass(frozen=True)
class Scope:
    """What a budget counts: its period, the time zone its calendar periods are in, and its filters ('' for any)."""

    period: str
    tz: str = "UTC"
    flow: str = ""
    phase: str = ""
    tier: str = ""
    project: str = ""

    @property
    def key(self) -> str:
        tz = "" if self.period == "run" else self.tz
        return json.dumps([self.period, tz, self.flow, self.phase, self.tier, self.project])

    def period_of(self, when: str | datetime, run_id: str | None) -> str | None:
        """The period key an event at `when` in run `run_id` counts in: a period's start, or the run id."""
        if self.period == "run":
            return run_id or None
        instant = datetime.fromisoformat(when) if isinstance(when, str) else when
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        return period_start(self.period, ZoneInfo(self.tz), instant)


@dataclass(frozen=True)
class Spent:
    """One addition to the budget totals: a call's cost and tokens, or a kept reservation's worst case."""

    when: str
    run_id: str | None
    flow: str | None
    phase: str | None
    tier: str | None
    project: str | None
    usd: float
    tokens: int
    unpriced_tokens: int

    def falls_in(self, scope: Any) -> bool:
        return (
            (not scope.flow or scope.flow == self.flow)
            and (not scope.phase or scope.phase == self.phase)
            and (not scope.tier or scope.tier == self.tier)
            and (not scope.project or scope.project == self.project)
        )


def totals_key(scope: str, period: str) -> str:
    return f"{scope}\n{period}"


_SCOPES = sa.select(budget_scopes)
_TOTALS = sa.select(
    budget_totals.c.key, budget_totals.c.usd, budget_totals.c.tokens, budget_totals.c.unpriced_tokens
).where(budget_totals.c.key.in_(sa.bindparam("keys", expanding=True)))


def count_spend(conn: Connection, spent: Spent) -> None:
    """Add `spent` to the totals of every registered budget scope it falls in (in the caller's transaction)."""
    if not (spent.usd or spent.tokens):
        return
    scopes = conn.execute(_SCOPES).all()
    if not scopes:
        return
    lock_budgets(conn)  # on PostgreSQL: never between a scope's rebuild and its registration
    rows = []
    for s in scopes:
        if not spent.falls_in(s):
            continue
        period = Scope(s.period, s.tz).period_of(spent.when, spent.run_id)
        if period is not None:
            rows.append(
                {
                    "key": totals_key(s.scope, period),
                    "usd": spent.usd,
                    "tokens": spent.tokens,
                    "unpriced_tokens": spent.unpriced_tokens,
                }
            )
    if rows:
        conn.execute(_add_statement(conn.dialect.name), rows)


@lru_cache(maxsize=4)
def _add_statement(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(budget_totals)
    return statement.on_conflict_do_update(
        index_elements=["key"],
        set_={k: budget_totals.c[k] + statement.excluded[k] for k in ("usd", "tokens", "unpriced_tokens")},
    )


def spent_totals(conn: Connection, wanted: Sequence[tuple[Scope, str]]) -> list[tuple[float, int, int]]:
    """(USD, tokens, unpriced tokens) the running totals hold for each (scope, period) of `wanted` (a period start
    or a run id), read in one statement: a budget check costs one round trip however many budgets apply."""
    keys = [totals_key(scope.key, period) for scope, period in wanted]
    if not keys:
        return []
    found = {row.key: row for row in conn.execute(_TOTALS, {"keys": sorted(set(keys))})}
    return [
        (float(row.usd), int(row.tokens), int(row.unpriced_tokens)) if (row := found.get(key)) else (0.0, 0, 0)
        for key in keys
    ]


def spent_from_calls(
    conn: Connection, scope: Scope, *, run_id: str | None = None, start: str | None = None, end: str | None = None
) -> tuple[float, int, int]:
    """(USD, tokens, unpriced tokens) summed from the calls and the kept reservations: a run's, or those at or
    after `start` and before `end`. What the running totals hold, computed the slow way (rebuilds, old periods)."""
    # A call's tokens as `Ledger.record` counts them: its usage, or a lost call's worst case.
    worst = sa.and_(calls.c.usage_known.is_(False), calls.c.worst_tokens > 0)
    used = sum((calls.c[kind] for kind in TOKEN_KINDS[1:]), calls.c[TOKEN_KINDS[0]])
    tokens = sa.case((worst, calls.c.worst_tokens), else_=used)
    unpriced_call = sa.and_(calls.c.cost_usd.is_(None), sa.or_(calls.c.usage_known.is_(True), worst))
    spent_q = sa.select(
        sa.func.coalesce(sa.func.sum(calls.c.cost_usd), 0.0),
        sa.func.coalesce(sa.func.sum(tokens), 0),
        sa.func.coalesce(sa.func.sum(sa.case((unpriced_call, tokens), else_=0)), 0),
    )
    kept_q = sa.select(
        sa.func.coalesce(sa.func.sum(reservations.c.usd), 0.0),
        sa.func.coalesce(sa.func.sum(reservations.c.tokens), 0),
        sa.func.coalesce(sa.func.sum(sa.case((reservations.c.priced.is_(False), reservations.c.tokens), else_=0)), 0),
    ).where(reservations.c.kept.is_(True))
    if scope.period == "run":
        spent_q = spent_q.where(calls.c.run_id == run_id)
        kept_q = kept_q.where(reservations.c.run_id == run_id)
    else:
        if start is not None:
            spent_q = spent_q.where(calls.c.timestamp >= start)
            kept_q = kept_q.where(reservations.c.created >= start)
        if end is not None:
            spent_q = spent_q.where(calls.c.timestamp < end)
            kept_q = kept_q.where(reservations.c.created < end)
    for name in ("flow", "phase", "tier", "project"):
        if getattr(scope, name):
            spent_q = spent_q.where(calls.c[name] == getattr(scope, name))
            kept_q = kept_q.where(reservations.c[name] == getattr(scope, name))
    a = conn.execute(spent_q).one()
    b = conn.execute(kept_q).one()
    return float(a[0]) + float(b[0]), int(a[1]) + int(b[1]), int(a[2]) + int(b[2])


def tracked_scopes(conn: Connection) -> dict[str, str | None]:
    """Every budget scope registered on the ledger, with its `tracked_from` (see `track`)."""
    return {row.scope: row.tracked_from for row in conn.execute(_SCOPES)}


def track(conn: Connection, scopes: list[Scope], now: datetime) -> tuple[dict[str, str | None], bool]:
    """Make sure every scope is registered, rebuilding the totals of a new one from the calls; returns each scope's
    `tracked_from` (the first period start whose totals are complete; None for run scopes), and whether this
    transaction registered any (it counts only once it commits).

    Call it in a write transaction. The rebuild happens once per scope and ledger, under the migration and budget
    locks, so no reservation or settlement runs between it and the scope's registration.
    """
    known = tracked_scopes(conn)
    # Budgets may share a scope (a hard and a `warn` limit on one month): each scope is one row and one total.
    missing = list({s.key: s for s in scopes if s.key not in known}.values())
    if not missing:
        return known, False
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
    lock_budgets(conn)
    known = tracked_scopes(conn)  # another process may have done it
    for scope in [s for s in missing if s.key not in known]:
        tracked_from = scope.period_of(now, None)
        _rebuild(conn, scope, tracked_from)
        conn.execute(
            budget_scopes.insert().values(
                scope=scope.key,
                period=scope.period,
                tz=scope.tz,
                flow=scope.flow,
                phase=scope.phase,
                tier=scope.tier,
                project=scope.project,
                tracked_from=tracked_from,
                registered=now_iso(),
            )
        )
        known[scope.key] = tracked_from
    return known, True


def _rebuild(conn: Connection, scope: Scope, tracked_from: str | None) -> None:
    conn.execute(budget_totals.delete().where(budget_totals.c.key.startswith(scope.key + "\n", autoescape=True)))
    add = _add_statement(conn.dialect.name)
    if scope.period == "run":
        filters = [calls.c[n] == getattr(scope, n) for n in ("flow", "phase", "tier", "project") if getattr(scope, n)]
        kept = [
            reservations.c[n] == getattr(scope, n) for n in ("flow", "phase", "tier", "project") if getattr(scope, n)
        ]
        runs_q = sa.union(
            sa.select(calls.c.run_id).where(*filters).distinct(),
            sa.select(reservations.c.run_id).where(reservations.c.kept.is_(True), *kept).distinct(),
        )
        for (run_id,) in conn.execute(runs_q).all():
            if run_id:
                usd, tokens, unpriced = spent_from_calls(conn, scope, run_id=run_id)
                rows = {"key": totals_key(scope.key, run_id), "usd": usd, "tokens": tokens, "unpriced_tokens": unpriced}
                conn.execute(add, rows)
        return
    assert tracked_from is not None
    filters = [calls.c[n] == getattr(scope, n) for n in ("flow", "phase", "tier", "project") if getattr(scope, n)]
    latest = conn.execute(sa.select(sa.func.max(calls.c.timestamp)).where(calls.c.timestamp >= tracked_from, *filters))
    last = max(latest.scalar() or "", conn.execute(sa.select(sa.func.max(reservations.c.created))).scalar() or "")
    start, tz = tracked_from, ZoneInfo(scope.tz)
    while True:
        end = period_end(scope.period, tz, start).isoformat(timespec="microseconds")
        usd, tokens, unpriced = spent_from_calls(conn, scope, start=start, end=end)
        if usd or tokens:
            conn.execute(
                add, {"key": totals_key(scope.key, start), "usd": usd, "tokens": tokens, "unpriced_tokens": unpriced}
            )
        if end > last:
            return
        start = end


def _call_filters(
    since: str | None, run_id: str | None, flow: str | None, project: str | None
) -> list[sa.ColumnElement[bool]]:
    """The conditions of a listing's filters (`Ledger.rows`): calls on or after `since`, of a run, flow or project."""
    conditions = []
    if since:
        conditions.append(calls.c.timestamp >= since)
    if run_id:
        conditions.append(calls.c.run_id == run_id)
    if flow:
        conditions.append(calls.c.flow == flow)
    if project:
        conditions.append(calls.c.project == project)
    return conditions


_FAILED = 2**64 - 1
"""The length that says a listing's writer failed: its message follows (`_write_pieces`)."""


def _write_pieces(engine: Engine, piece: Callable[[int], str], starts: list[int], fd: int) -> NoReturn:
    """In a forked child of `Ledger.stream_json`: each piece as its length (8 bytes) and its UTF-8 text, then exit;
    a failure as `_FAILED` and its message. Never flushes the parent's buffers or runs its exit handlers."""
    status = 1
    try:
        engine.dispose(close=False)  # the parent's connections stay the parent's: this process opens its own
        with os.fdopen(fd, "wb") as out:
            try:
                for first in starts:
                    data = piece(first).encode()
                    out.write(len(data).to_bytes(8, "little"))
                    out.write(data)
            except BrokenPipeError:
                raise
            except BaseException as exc:
                said = f"{type(exc).__name__}: {exc}".encode()
                out.write(_FAILED.to_bytes(8, "little") + len(said).to_bytes(8, "little") + said)
                raise
        status = 0
    finally:
        os._exit(status)


def _read_piece(pipe: BinaryIO) -> str:
    """The next piece a `_write_pieces` child wrote, or its failure as a LedgerError."""
    head = pipe.read(8)
    size = int.from_bytes(head, "little") if len(head) == 8 else None
    if size == _FAILED:
        said = pipe.read(int.from_bytes(pipe.read(8), "little")).decode(errors="replace")
        raise LedgerError(f"the listing could not be read from the ledger: {said}")
    data = pipe.read(size) if size is not None else b""
    if size is None or len(data) != size:
        raise LedgerError("the listing could not be read from the ledger: a process writing it ended early")
    return data.decode()


def _row_json(dialect: str) -> str:
    """The statement that writes each call matching `{where}` as one compact JSON object, by id, its keys in
    `COLUMNS` order; the infinities as JSON numbers (`9e999`, which `json.loads` reads as `inf`).

    SQLite's `json_object` writes a float with 15 significant digits (`%!.15g`, the most that every float shows
    as written: 0.1 + 0.2 is listed as 0.3); PostgreSQL's `row_to_json` (with `extra_float_digits` at 1) the
    shortest text that reads back exact, as Python does. `csv` lists Python's own."""
    if dialect == "postgresql":
        items = []
        for name in COLUMNS:
            quoted = f'"{name}"'
            if isinstance(calls.c[name].type, sa.Float):
                items.append(
                    f"CASE WHEN {quoted} = 'Infinity' THEN '9e999'::json WHEN {quoted} = '-Infinity' THEN "
                    f"'-9e999'::json WHEN {quoted} = 'NaN' THEN NULL ELSE to_json({quoted}) END AS {quoted}"
                )
            else:
                items.append(quoted)
        select = f"SELECT {', '.join(items)} FROM calls WHERE {{where}}"
        return f"SELECT row_to_json(r)::text FROM ({select}) r ORDER BY r.id"
    pairs = []
    for name in COLUMNS:
        quoted = f'"{name}"'
        value = quoted
        if isinstance(calls.c[name].type, sa.Boolean):  # kept as 0 and 1
            value = f"CASE WHEN {quoted} THEN json('true') WHEN NOT {quoted} THEN json('false') END"
        elif isinstance(calls.c[name].type, sa.Float):  # `json_object` would write an infinity as `Inf`
            value = (
                f"CASE WHEN {quoted} - {quoted} = 0.0 THEN {quoted} WHEN {quoted} > 0 THEN json('9e999')"
                f" WHEN {quoted} < 0 THEN json('-9e999') END"
            )
        pairs.append(f"'{name}', {value}")
    return f"SELECT json_object({', '.join(pairs)}) FROM calls WHERE {{where}} ORDER BY id"
