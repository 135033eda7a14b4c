"""The metadata store: one SQLAlchemy engine, migrations applied on open, explicit write locks.

SQLite (the default) runs in WAL mode with a busy timeout. Write transactions start with
``BEGIN IMMEDIATE`` so that two writers queue on the lock instead of both reading and then
failing to upgrade ("database is locked"); reads use a deferred ``BEGIN`` and never block
writers. On PostgreSQL a migration holds a transaction-level advisory lock.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, insert, inspect, select
from sqlalchemy.exc import OperationalError

from detops.errors import StoreError
from detops.store.schema import MIGRATIONS, metadata, schema_version

_MIGRATION_LOCK_ID = 0x6465746F  # "deto"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def aware(t: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands datetimes back without their zone; every time in the store is UTC."""
    if t is not None and t.tzinfo is None:
        return t.replace(tzinfo=dt.UTC)
    return t


def _enable_wal(dbapi_conn: Any, busy_timeout_ms: int) -> None:
    """Switch a file database to WAL, waiting out other connections as the busy timeout says.

    WAL is a property of the file, so this is a no-op after the first connection. Switching
    needs an exclusive lock and SQLite answers ``SQLITE_BUSY`` at once instead of calling the
    busy handler, so when several processes open a new store together we retry here.
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.005
    while True:
        try:
            cur = dbapi_conn.cursor()
            try:
                if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    cur.execute("PRAGMA journal_mode=WAL")
                return
            finally:
                cur.close()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def _sqlite_engine(url: str, busy_timeout_ms: int) -> Engine:
    engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below), so the driver must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        if ":memory:" not in url and url not in ("sqlite://", "sqlite:///"):
            _enable_wal(dbapi_conn, busy_timeout_ms)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class MetadataStore:
    """SQLAlchemy engine plus read / write transactions; migrates the schema when opened."""

    def __init__(self, url: str, *, busy_timeout_ms: int = 30_000, migrate: bool = True) -> None:
        self.url = url
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        try:
            if self.dialect == "sqlite":
                self.engine = _sqlite_engine(url, busy_timeout_ms)
            else:
                self.engine = create_engine(url, pool_pre_ping=True)
        except Exception as exc:  # bad URL, missing driver
            raise StoreError(f"cannot open metadata store {url!r}: {exc}") from exc
        if migrate:
            self.migrate()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that holds the write lock from its first statement."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def version(self) -> int:
        with self.read() as conn:
            if not inspect(conn).has_table(schema_version.name):
                return 0
            return int(conn.execute(select(func.max(schema_version.c.version))).scalar() or 0)

    def migrate(self) -> list[int]:
        """Apply pending migrations; safe when several processes open a new store at once."""
        try:
            with self.write() as conn:
                if self.dialect == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
                metadata.create_all(conn, tables=[schema_version])
                current = int(
                    conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
                )
                applied = []
                for number, _title, step in MIGRATIONS:
                    if number <= current:
                        continue
                    step(conn)
                    conn.execute(insert(schema_version).values(version=number, applied_at=utcnow()))
                    applied.append(number)
                return applied
        except OperationalError as exc:
            raise StoreError(f"cannot migrate metadata store {self.url}: {exc.orig}") from exc

    def dispose(self) -> None:
        self.engine.dispose()
