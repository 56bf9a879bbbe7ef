"""SQLite writes: small ones commit on the event loop when nothing else is writing; busy or
over-budget ones are rolled back there and redone on the writer thread, exactly once.

Deterministic: the busy path is forced by a second connection holding the write lock, the
over-budget path by a write far over the 1 ms budget (20,000 rows), and the "interrupted after
it ran" path by a fake CPU clock that makes the budget run out at every step of a transaction.
Row counts prove exactly-once: ``t`` has a primary key (a second copy raises), ``bulk`` has none
(a second copy doubles the count).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import sqlite3
import types
from contextlib import closing

import pytest
import pytest_asyncio

import runtime.store.sqlite as sqlite_store
from runtime.store.errors import UniqueViolation
from runtime.store.sqlite import SQLiteDatabase

BULK_ROWS = 20000
# One statement far over the inline write budget (1 ms of CPU): 20,000 inserts.
BULK = ("INSERT INTO bulk (k) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
        f"WHERE i < {BULK_ROWS}) SELECT i FROM n")
INSERT = "INSERT INTO t (id, v) VALUES (?, ?)"


async def open_db(path) -> SQLiteDatabase:
    db = SQLiteDatabase(f"sqlite:///{path}/w.db")
    # No budget for connect's own PRAGMAs on the loop's connection (they run before any read or
    # write sets one; with the real check interval they never reach the handler anyway).
    db._inline_deadline = math.inf
    await db.connect()
    await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    await db.execute("CREATE TABLE bulk (k INTEGER)")
    return db


@pytest_asyncio.fixture
async def db(tmp_path):
    database = await open_db(tmp_path)
    try:
        yield database
    finally:
        await database.close()


def fresh(db: SQLiteDatabase) -> closing[sqlite3.Connection]:
    """A connection of its own: sees only what was committed."""
    return closing(sqlite3.connect(db.path, isolation_level=None))


def ids(db: SQLiteDatabase) -> list[int]:
    with fresh(db) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM t ORDER BY id")]


def bulk_count(db: SQLiteDatabase) -> int:
    with fresh(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM bulk").fetchone()[0]


def count_writer_hops(db: SQLiteDatabase, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy: how many calls went to the writer thread (a one-element list, bumped per hop)."""
    hops = [0]
    real = db._on_writer

    async def spy(*args):
        hops[0] += 1
        return await real(*args)

    monkeypatch.setattr(db, "_on_writer", spy)
    return hops


async def until(condition, timeout: float = 10.0) -> None:
    """Yield to the loop until ``condition()`` holds (the timeout only guards against a hang)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


class LockHolder:
    """Another connection (as another process would) holding the database's write lock."""

    def __init__(self, db: SQLiteDatabase) -> None:
        self.conn = sqlite3.connect(db.path, isolation_level=None)

    def __enter__(self) -> LockHolder:
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")

    def __exit__(self, *exc) -> None:
        self.release()
        self.conn.close()


# 1. Idle: inline, visible, once -------------------------------------------------------------

async def test_idle_batch_commits_on_the_loop_once_and_is_visible(db, monkeypatch):
    hops = count_writer_hops(db, monkeypatch)
    assert await db.run_batch([(INSERT, (1, "a")), (INSERT, (2, "b"))]) == [1, 1]
    assert ids(db) == [1, 2]  # committed: a fresh connection sees it
    assert await db.execute("UPDATE t SET v = ? WHERE id = ?", ("c", 2)) == 1  # DML via execute too
    assert await db.execute("DELETE FROM t WHERE id = ?", (99,)) == 0
    with fresh(db) as conn:
        assert conn.execute("SELECT v FROM t WHERE id = 2").fetchone()[0] == "c"
    assert (db.inline_writes, db.inline_write_fallbacks, db.batch_groups, hops[0]) == (3, 0, 0, 0)
    assert ids(db) == [1, 2]


async def test_idle_write_error_raises_and_writes_nothing(db, monkeypatch):
    hops = count_writer_hops(db, monkeypatch)
    await db.run_batch([(INSERT, (1, "a"))])
    with pytest.raises(UniqueViolation):
        await db.run_batch([(INSERT, (2, "b")), (INSERT, (1, "dup"))])
    with pytest.raises(UniqueViolation):
        await db.execute(INSERT, (1, "dup"))
    assert ids(db) == [1]  # the failed batch's first row was undone with it
    assert hops[0] == 0 and db.inline_write_fallbacks == 0
    assert await db.run_batch([(INSERT, (2, "b"))]) == [1]  # the loop's connection is usable after
    assert ids(db) == [1, 2]


# 2. Busy: another connection holds the write lock -------------------------------------------

async def test_busy_batch_is_redone_on_the_writer_after_the_lock_is_released(db):
    with LockHolder(db) as other:
        other.conn.execute(INSERT, (100, "other"))
        first = asyncio.create_task(db.run_batch([(INSERT, (1, "a")), (INSERT, (2, "b")), (BULK, ())]))
        await until(lambda: db.batch_groups == 1)  # tried on the loop, busy, handed to the writer
        assert db.inline_write_fallbacks == 1 and db.inline_writes == 0
        # Issued while the writer waits for the lock: queues behind the first batch.
        second = asyncio.create_task(db.run_batch([(INSERT, (3, "c"))]))
        await asyncio.sleep(0.05)
        assert not first.done() and not second.done()  # the writer thread waits for the lock
        assert ids(db) == [] and bulk_count(db) == 0
        other.release()
        assert await first == [1, 1, BULK_ROWS]
        assert await second == [1]
    assert ids(db) == [1, 2, 3, 100]  # each once (a second copy would have raised), nothing lost
    assert bulk_count(db) == BULK_ROWS
    assert db.inline_write_fallbacks == 1


async def test_busy_execute_is_redone_on_the_writer(db):
    with LockHolder(db) as other:
        task = asyncio.create_task(db.execute(INSERT, (1, "a")))
        await until(lambda: db.inline_write_fallbacks == 1)
        other.release()
        assert await task == 1
    assert ids(db) == [1] and db.inline_writes == 0


async def test_batches_queue_behind_an_open_transaction_and_commit_once(db):
    entered, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with db.transaction() as tx:
            await tx.execute(INSERT, (1, "tx"))
            entered.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await entered.wait()
    batches = [asyncio.create_task(db.run_batch([(INSERT, (i, "b"))])) for i in (2, 3, 4)]
    await asyncio.sleep(0.01)
    assert not any(task.done() for task in batches)
    assert db.inline_write_fallbacks == 0  # queued for the writer, not tried on the loop
    release.set()
    await holder
    assert await asyncio.gather(*batches) == [[1], [1], [1]]
    assert ids(db) == [1, 2, 3, 4]


# 3. Over budget ------------------------------------------------------------------------------

async def test_over_budget_write_is_rolled_back_and_redone_on_the_writer_once(db, monkeypatch):
    hops = count_writer_hops(db, monkeypatch)
    assert await db.run_batch([(INSERT, (1, "a")), (BULK, ()), (INSERT, (2, "b"))]) == [1, BULK_ROWS, 1]
    assert (db.inline_writes, db.inline_write_fallbacks, db.batch_groups, hops[0]) == (0, 1, 1, 1)
    assert ids(db) == [1, 2]
    assert bulk_count(db) == BULK_ROWS  # exactly one copy
    assert await db.execute(BULK) == BULK_ROWS  # execute: the same
    assert db.inline_write_fallbacks == 2 and bulk_count(db) == 2 * BULK_ROWS
    # Small writes still commit on the loop afterwards.
    assert await db.run_batch([(INSERT, (3, "c"))]) == [1]
    assert db.inline_writes == 1 and ids(db) == [1, 2, 3]


async def test_budget_still_holds_after_a_failed_batch_in_a_group(db):
    """A batch's error is undone without a budget; the batches after it keep to the budget."""
    await db.run_batch([(INSERT, (1, "a"))])
    results = await asyncio.gather(
        db.run_batch([(INSERT, (1, "dup"))]),
        db.run_batch([(BULK, ())]),
        return_exceptions=True,
    )
    assert isinstance(results[0], UniqueViolation)
    assert results[1] == [BULK_ROWS]
    assert db.inline_write_fallbacks == 1  # the slow batch was not left to run on the loop
    assert bulk_count(db) == BULK_ROWS and ids(db) == [1]


# 4. Grouping -------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["loop", "writer"])
async def test_batches_of_one_iteration_commit_together_each_all_or_nothing(db, where):
    await db.run_batch([(INSERT, (100, "taken"))])
    inline_before = db.inline_writes
    batches = [
        [(INSERT, (1, "a")), (INSERT, (2, "a"))],
        [(INSERT, (3, "b")), (INSERT, (100, "dup"))],  # fails on its second row
        [(INSERT, (4, "c")), (BULK, ()) if where == "writer" else (INSERT, (5, "c"))],
        [(INSERT, (6, "d"))],
    ]
    if where == "loop":
        results = await asyncio.gather(*(db.run_batch(b) for b in batches), return_exceptions=True)
        assert db.inline_writes - inline_before == 1  # one transaction for all four
        assert db.batch_groups == 0
    else:
        with LockHolder(db) as other:
            tasks = asyncio.gather(*(db.run_batch(b) for b in batches), return_exceptions=True)
            await until(lambda: db.batch_groups == 1)
            other.release()
            results = await tasks
        assert db.inline_writes == inline_before and db.batch_groups == 1  # one writer transaction
    assert results[0] == [1, 1]
    assert isinstance(results[1], UniqueViolation)
    assert results[2] == ([1, BULK_ROWS] if where == "writer" else [1, 1])
    assert results[3] == [1]
    assert ids(db) == ([1, 2, 4, 6, 100] if where == "writer" else [1, 2, 4, 5, 6, 100])  # no 3
    assert bulk_count(db) == (BULK_ROWS if where == "writer" else 0)


async def test_a_loop_transaction_carries_at_most_four_batches(db):
    results = await asyncio.gather(*(db.run_batch([(INSERT, (i, "x"))]) for i in range(10)))
    assert results == [[1]] * 10
    assert db.inline_writes == 3  # 4 + 4 + 2
    assert ids(db) == list(range(10))


# 5. No double write when the budget runs out at any step, COMMIT's included ------------------

async def test_no_double_write_wherever_the_budget_runs_out(tmp_path, monkeypatch):
    """SQLite calls the progress handler once more after a statement has run, so a statement
    reported as interrupted may have done its work. A fake CPU clock (one tick per reading) and
    a check every VM step make the budget run out at each step of a loop transaction in turn,
    through BEGIN, the savepoints, the inserts, RELEASE and COMMIT: every write lands once."""
    monkeypatch.setattr(sqlite_store, "_CHECK_STEPS", 1)  # read at connect
    db = await open_db(tmp_path)
    try:
        ticks = itertools.count()
        monkeypatch.setattr(sqlite_store, "time", types.SimpleNamespace(thread_time=lambda: next(ticks)))
        next_id = itertools.count(1)
        expected: list[int] = []
        returned: list[int] = []
        for budget in range(0, 240):
            monkeypatch.setattr(sqlite_store, "INLINE_WRITE_BUDGET_S", budget)
            size = budget % 4 + 1  # 1-4 batches in one loop transaction
            batches = [[(INSERT, (i := next(next_id), "x")), (INSERT, (i + 100000, "y"))] for _ in range(size)]
            results = await asyncio.gather(*(db.run_batch(b) for b in batches))  # no UniqueViolation
            assert results == [[1, 1]] * size
            expected += [i for b in batches for i in (b[0][1][0], b[1][1][0])]
            rows = await db.fetchall("INSERT INTO t (id, v) VALUES (?, 'r') RETURNING id", (i := next(next_id),))
            assert rows == [{"id": i}]
            returned.append(i)
        # The sweep went through both outcomes.
        assert db.inline_writes > 50 and db.inline_write_fallbacks > 50
    finally:
        monkeypatch.undo()
        await db.close()
    assert ids(db) == sorted(expected + returned)  # each exactly once


# 6. The WAL stays bounded -------------------------------------------------------------------

async def test_wal_is_checkpointed_by_the_writer_and_stays_small(db, monkeypatch):
    checkpoints = [0]
    real = SQLiteDatabase._checkpoint_wal

    async def spy(self):
        checkpoints[0] += 1
        await real(self)

    monkeypatch.setattr(SQLiteDatabase, "_checkpoint_wal", spy)
    assert db._loop_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # the loop never checkpoints
    for conn in (db._loop_conn, db._writer):
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == 64 * 1024 * 1024
    await db.execute("CREATE INDEX t_v ON t (v)")
    n = 2000
    for i in range(n):  # ~8 KB of WAL each: ~17 MB without checkpoints
        await db.run_batch([(INSERT, (i, f"v{i * 7919 % n}"))])
    if db._checkpoint is not None:
        await db._checkpoint
    assert checkpoints[0] >= 1
    assert db.inline_writes >= sqlite_store.CHECKPOINT_EVERY
    wal = db.path + "-wal"
    assert os.path.getsize(wal) < 8 * 1024 * 1024
    # A checkpoint copies the whole WAL (its second pass holds the write lock), so the next write
    # starts it over from the beginning.
    await db._checkpoint_wal()
    await db.run_batch([(INSERT, (n, "last"))])
    with fresh(db) as conn:
        _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert 0 < frames <= 10
    assert len(ids(db)) == n + 1


# 7. RETURNING via fetchall ------------------------------------------------------------------

async def test_returning_write_via_fetchall_inline_and_on_fallback(db, monkeypatch):
    hops = count_writer_hops(db, monkeypatch)
    rows = await db.fetchall("INSERT INTO t (id, v) VALUES (?, ?) RETURNING id, v", (1, "a"))
    assert rows == [{"id": 1, "v": "a"}]
    assert await db.fetchall("UPDATE t SET v = 'b' WHERE id = ? RETURNING v", (1,)) == [{"v": "b"}]
    assert await db.fetchall("DELETE FROM t WHERE id = ? RETURNING id", (42,)) == []
    assert (db.inline_writes, hops[0]) == (3, 0)

    # Busy: redone on the writer once the lock is free.
    with LockHolder(db) as other:
        task = asyncio.create_task(db.fetchall("INSERT INTO t (id, v) VALUES (?, ?) RETURNING id", (2, "c")))
        await until(lambda: db.inline_write_fallbacks == 1)
        other.release()
        assert await task == [{"id": 2}]
    # Over budget: rolled back, redone on the writer, every row returned once.
    rows = await db.fetchall(BULK + " RETURNING k")
    assert sorted(row["k"] for row in rows) == list(range(1, BULK_ROWS + 1))
    assert db.inline_write_fallbacks == 2 and hops[0] == 2
    assert ids(db) == [1, 2] and bulk_count(db) == BULK_ROWS
    with fresh(db) as conn:
        assert conn.execute("SELECT v FROM t WHERE id = 1").fetchone()[0] == "b"
