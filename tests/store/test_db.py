from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading

import pytest
from sqlalchemy import insert, select, text

from detops.errors import StoreError
from detops.store.db import MetadataStore, utcnow
from detops.store.schema import MIGRATIONS, key_values


def _open(url: str, barrier, out) -> None:  # runs in a child process
    barrier.wait()
    try:
        store = MetadataStore(url)
        out.put(("ok", store.version()))
    except BaseException as exc:  # pragma: no cover - reported to the parent
        out.put(("error", repr(exc)))


def test_new_store_is_migrated_to_the_latest_version(tmp_path):
    store = MetadataStore(f"sqlite:///{tmp_path / 'd.db'}")
    assert store.version() == MIGRATIONS[-1][0]
    assert store.migrate() == []  # nothing left to apply


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    store = MetadataStore(f"sqlite:///{tmp_path / 'd.db'}")
    with store.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_switching_to_wal_waits_for_a_lock_held_by_another_connection(tmp_path):
    # Opening a store while another connection holds the lock waits (busy timeout), it
    # does not fail with "database is locked".
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.5, holder.execute, args=("COMMIT",))
    release.start()
    try:
        store = MetadataStore(f"sqlite:///{path}")
    finally:
        release.join()
        holder.close()
    with store.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert store.version() == MIGRATIONS[-1][0]


class _BusyOnWal:
    """A DB-API connection whose switch to WAL answers "database is locked" ``busy`` times
    without waiting, as SQLite does while another process creates the same file."""

    def __init__(self, busy: int) -> None:
        self.busy, self.mode, self.switches = busy, "delete", 0

    def cursor(self) -> _BusyOnWal:
        return self

    def execute(self, sql: str) -> _BusyOnWal:
        if sql == "PRAGMA journal_mode=WAL":
            self.switches += 1
            if self.busy:
                self.busy -= 1
                raise sqlite3.OperationalError("database is locked")
            self.mode = "wal"
        return self

    def fetchone(self) -> tuple[str]:
        return (self.mode,)

    def close(self) -> None:
        pass


def test_the_switch_to_wal_is_retried_when_sqlite_refuses_it_without_waiting():
    from detops.store.db import _enable_wal

    conn = _BusyOnWal(busy=3)
    _enable_wal(conn, busy_timeout_ms=5_000)
    assert (conn.mode, conn.switches) == ("wal", 4)
    _enable_wal(conn, busy_timeout_ms=5_000)  # already WAL: no second switch
    assert conn.switches == 4
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _enable_wal(_BusyOnWal(busy=10**6), busy_timeout_ms=50)  # gives up at the timeout


def test_a_lock_held_past_the_busy_timeout_is_a_clear_store_error(tmp_path):
    path = tmp_path / "stuck.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            MetadataStore(f"sqlite:///{path}", busy_timeout_ms=200)
    finally:
        holder.close()


@pytest.mark.parametrize("round_", range(2))
def test_processes_opening_a_new_store_at_once_do_not_race(tmp_path, round_):
    # Under load, switching a brand-new file to WAL could answer "database is locked"
    # without waiting (CI caught it once); the store retries that switch.
    url = f"sqlite:///{tmp_path / 'race.db'}"
    ctx = mp.get_context("spawn")
    n = 6
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open, args=(url, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [("ok", MIGRATIONS[-1][0])] * n
    rows = (
        sqlite3.connect(tmp_path / "race.db")
        .execute("SELECT version FROM schema_version")
        .fetchall()
    )
    assert sorted(r[0] for r in rows) == [m[0] for m in MIGRATIONS]  # each applied once


def test_concurrent_writers_queue_instead_of_failing(tmp_path):
    store = MetadataStore(f"sqlite:///{tmp_path / 'w.db'}")
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for j in range(20):
                with store.write() as conn:
                    # read-then-write: deferred transactions would deadlock here
                    conn.execute(select(key_values)).all()
                    conn.execute(
                        insert(key_values).values(
                            key=f"{i}-{j}", value={"i": i}, updated_at=utcnow()
                        )
                    )
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM key_values")).scalar() == 80


def test_failed_write_transaction_stores_nothing(tmp_path):
    store = MetadataStore(f"sqlite:///{tmp_path / 't.db'}")
    with pytest.raises(RuntimeError), store.write() as conn:
        conn.execute(insert(key_values).values(key="k", value=1, updated_at=utcnow()))
        raise RuntimeError("boom")
    with store.read() as conn:
        assert conn.execute(select(key_values)).all() == []


def test_bad_url_is_a_store_error():
    with pytest.raises(StoreError, match="cannot open metadata store"):
        MetadataStore("nosuchdialect://x")


def test_an_older_store_is_upgraded_in_order(tmp_path, monkeypatch):
    import detops.store.db as db

    url = f"sqlite:///{tmp_path / 'old.db'}"
    monkeypatch.setattr(db, "MIGRATIONS", MIGRATIONS[:1])
    assert MetadataStore(url).version() == 1
    monkeypatch.setattr(db, "MIGRATIONS", MIGRATIONS)
    store = MetadataStore(url)
    assert store.version() == MIGRATIONS[-1][0]
    with store.read() as conn:
        tables = set(conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type='table'").scalars())
    assert {"dataset_versions", "runs", "model_versions", "predictions"} <= tables
