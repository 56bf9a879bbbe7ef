"""SQLite reads: short ones run on the event loop within a CPU budget, long ones move to reader threads."""

from __future__ import annotations

import asyncio
import threading

from runtime.store.sqlite import SQLiteDatabase

# A read that takes far more than the inline budget (0.5 ms of CPU): count to two million.
SLOW = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000000) "
        "SELECT COUNT(*) AS c FROM n")


async def test_short_reads_stay_on_the_loop_and_slow_ones_move_to_threads(tmp_path):
    db = SQLiteDatabase(f"sqlite:///{tmp_path}/r.db")
    await db.connect()
    try:
        await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        await db.execute("INSERT INTO t (id, v) VALUES (1, 'a')")
        for _ in range(2000):
            assert await db.fetchall("SELECT v FROM t WHERE id = ?", (1,)) == [{"v": "a"}]
        assert db.inline_fallbacks == 0

        # The slow read is interrupted on the loop, re-run on a reader thread, and remembered.
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        task = asyncio.create_task(ticker())
        assert await db.fetchval(SLOW) == 2000000
        task.cancel()
        assert db.inline_fallbacks == 1
        assert ticks > 5, "the event loop was blocked while the slow read ran"
        assert await db.fetchval(SLOW) == 2000000
        assert db.inline_fallbacks == 1  # second time it went straight to a thread
    finally:
        await db.close()


async def test_inline_reads_see_committed_writes_only(tmp_path):
    db = SQLiteDatabase(f"sqlite:///{tmp_path}/r.db")
    await db.connect()
    try:
        await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        entered, release = threading.Event(), asyncio.Event()

        async def writer() -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t (id) VALUES (1)")
                entered.set()
                await release.wait()

        task = asyncio.create_task(writer())
        while not entered.is_set():
            await asyncio.sleep(0.001)
        assert await db.fetchall("SELECT id FROM t") == []  # not committed yet, and not blocked
        release.set()
        await task
        assert await db.fetchall("SELECT id FROM t") == [{"id": 1}]
    finally:
        await db.close()
