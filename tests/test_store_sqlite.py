"""SQLite-specific behaviour (runs on SQLite whatever ``--store`` says)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resonate_server import schema
from resonate_server.records import Promise
from resonate_server.store import StoreTx
from resonate_store_sqlite.store import SqliteStore, SqliteTx
from sqlalchemy.dialects import sqlite as sqlite_dialect

from .conftest import ServerProcess, resonate
from .group_commit import one_failure_in_a_batch


def sqlite_server(make_server: Any, workdir: Path, *flags: str) -> ServerProcess:
    return make_server("--aio-store-sqlite-path", str(workdir / "resonate.db"), *flags, store=False)


def test_locked_database_gives_503_then_recovers(make_server: Any, workdir: Path) -> None:
    s = sqlite_server(make_server, workdir, "--health-timeout", "1s")
    c = s.client()
    assert c.call("promise.create", {"id": "a", "timeoutAt": 2**62}).status == 200
    blocker = sqlite3.connect(workdir / "resonate.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        healthz = c.get("/healthz")
        assert healthz.status == 503
        assert healthz.body["status"] == "unavailable"
        assert time.monotonic() - started < 4
        reply = c.call("promise.create", {"id": "b", "timeoutAt": 2**62})
        assert reply.status == 503
        assert reply.data.startswith("Store unavailable: ")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    deadline = time.monotonic() + 10
    while c.get("/healthz").status != 200:
        assert time.monotonic() < deadline, "health did not recover"
        time.sleep(0.1)
    assert c.call("promise.create", {"id": "b", "timeoutAt": 2**62}).status == 200
    assert c.call("promise.get", {"id": "a"}).status == 200
    assert s.proc is not None and s.proc.poll() is None


@contextlib.contextmanager
def a_write_waiting_for_the_lock(
    c: Any, workdir: Path, pid: str
) -> Iterator[concurrent.futures.Future[Any]]:
    """Another connection takes the write lock, and ``promise.create pid`` is sent; inside the
    block the create waits for the lock (checked on leaving), after it the create answers 200."""
    blocker = sqlite3.connect(workdir / "resonate.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            write = pool.submit(c.call, "promise.create", {"id": pid, "timeoutAt": 2**62})
            time.sleep(0.3)
            yield write
            assert not write.done()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert write.result(timeout=10).status == 200


def test_a_locked_database_does_not_stall_the_server(make_server: Any, workdir: Path) -> None:
    """While another connection holds the database lock, a write waits for it off the event
    loop: the server keeps answering other requests, and the write commits once the lock goes."""
    s = sqlite_server(make_server, workdir)
    c = s.client()
    with a_write_waiting_for_the_lock(c, workdir, "w"):
        started = time.monotonic()
        assert c.get("/no/such/path").status == 404
        assert time.monotonic() - started < 0.5
    assert c.call("promise.get", {"id": "w"}).status == 200


def test_searches_read_beside_the_writer(make_server: Any, workdir: Path) -> None:
    """Searches run on their own read-only connection: while another connection holds the
    write lock (and a write waits for it), every kind of search answers from committed state."""
    s = sqlite_server(make_server, workdir)
    c = s.client()
    tags = {"team": "a"}
    assert c.call("promise.create", {"id": "p", "timeoutAt": 2**62, "tags": tags}).status == 200
    with a_write_waiting_for_the_lock(c, workdir, "q"):
        found = c.call("promise.search", {"tags": tags})
        assert found.status == 200
        assert [p["id"] for p in found.data["promises"]] == ["p"]
        assert c.call("promise.search", {"state": "pending"}).status == 200
        assert c.call("task.search", {}).status == 200
        assert c.call("schedule.search", {}).status == 200
    found = c.call("promise.search", {"state": "pending"})
    assert [p["id"] for p in found.data["promises"]] == ["p", "q"]


def test_migrate_command(workdir: Path) -> None:
    db = str(workdir / "m.db")
    out = resonate("migrate", "status", "--aio-store-sqlite-path", db)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "1 pending  initial schema",
        "2 pending  promise tag index (SQLite)",
    ]
    out = resonate("migrate", "apply", "--aio-store-sqlite-path", db)
    assert out.stdout.splitlines() == [
        "applied 1: initial schema",
        "applied 2: promise tag index (SQLite)",
        "1 applied  initial schema",
        "2 applied  promise tag index (SQLite)",
    ]
    out = resonate("migrate", "apply", "--aio-store-sqlite-path", db)
    assert out.stdout.splitlines() == [
        "nothing to apply",
        "1 applied  initial schema",
        "2 applied  promise tag index (SQLite)",
    ]


def test_migrate_waits_for_a_lock_held_by_another_connection(workdir: Path) -> None:
    """``resonate migrate apply`` next to a running server: it waits for the server's write
    lock (up to the busy timeout) rather than failing at once."""
    db = workdir / "locked.db"
    assert resonate("migrate", "apply", "--aio-store-sqlite-path", str(db)).returncode == 0
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(1.0, blocker.execute, ("ROLLBACK",))
    release.start()
    try:
        out = resonate("migrate", "apply", "--aio-store-sqlite-path", str(db))
    finally:
        release.join()
        blocker.close()
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "nothing to apply"


def test_unopenable_database_is_a_one_line_error(workdir: Path) -> None:
    out = resonate(
        "serve",
        "--aio-store-sqlite-path",
        str(workdir / "no" / "such" / "dir.db"),
        "--api-http-port",
        "0",
    )
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith("resonate: error: cannot open SQLite database")
    )
    assert "Traceback" not in out.stderr


def test_a_failing_transaction_in_a_group_commit_undoes_only_itself(workdir: Path) -> None:
    """Transactions batched into one commit: the one that raises leaves no trace, the others
    commit (the store re-runs the batch with each transaction isolated)."""

    async def hold(tx: StoreTx) -> str:
        time.sleep(0.2)  # holds the store so that the next ones queue up together
        return "held"

    async def main() -> None:
        store = SqliteStore(str(workdir / "batch.db"))
        await store.start()
        try:
            await one_failure_in_a_batch(store, hold)
        finally:
            await store.close()

    asyncio.run(main())


def _tagged(i: int) -> Promise:
    tags = {"color": ("red", "green", "blue")[i % 3], "n": str(i % 7)}
    if i % 50 == 0:
        tags["rare"] = "yes"
    return Promise(f"p{i:03d}", "resolved" if i % 2 else "pending", {}, {}, tags, 2**62, 1, None)


def test_tag_search_walks_the_tag_index(workdir: Path) -> None:
    """promise.search by tags on SQLite reads the tag index, not every promise: the plan
    searches ``promise_tags`` by key and value, and the results, paged by cursor, are exactly
    the promises whose tags contain every searched pair. A database made before the index
    (schema version 1) gets its promises indexed when it is migrated."""
    path = workdir / "tags.db"
    old = sqlite3.connect(path, isolation_level=None)
    dialect = sqlite_dialect.dialect()
    old.execute(schema.bootstrap(dialect))
    for statement in schema.MIGRATIONS[0].statements(dialect):
        old.execute(statement)
    old.execute("INSERT INTO resonate_schema VALUES (1, 'initial schema', 0)")
    old.close()
    promises = [_tagged(i) for i in range(300)]

    async def fill_old(tx: StoreTx) -> None:
        for p in promises[:150]:
            assert await tx.insert_promise(p)

    async def fill_new(tx: StoreTx) -> None:
        for p in promises[150:]:
            assert await tx.insert_promise(p)

    async def search(store: SqliteStore, state: str | None, tags: dict[str, str]) -> list[str]:
        found: list[str] = []
        cursor = None
        while True:
            page = await store.transact(
                lambda tx: tx.search_promises(state, tags, 7, cursor)  # noqa: B023
            )
            found += [p.id for p in page]
            if len(page) < 7:
                return found
            cursor = page[-1].id

    async def plan(tx: StoreTx) -> list[str]:
        assert isinstance(tx, SqliteTx)
        statements: list[str] = []
        tx.c.set_trace_callback(statements.append)
        try:
            await tx.search_promises("pending", {"color": "red", "n": "3"}, 10, "p010")
        finally:
            tx.c.set_trace_callback(None)
        select = [s for s in statements if s.startswith("SELECT")][-1]  # the search itself
        return [r[3] for r in tx.c.execute("EXPLAIN QUERY PLAN " + select)]

    async def main() -> None:
        store = SqliteStore(str(path))
        await store.start(migrate=False)
        await store.transact(fill_old)
        await store.close()
        store = SqliteStore(str(path))
        await store.start()
        try:
            assert (await store.schema_versions())[0] == [1, 2]
            await store.transact(fill_new)
            cases: list[tuple[str | None, dict[str, str]]] = [
                (None, {"rare": "yes"}),
                ("pending", {"color": "red", "n": "3"}),
                ("resolved", {"color": "blue"}),
                (None, {"n": "4", "color": "green", "rare": "yes"}),
                (None, {"nope": "x"}),
                (None, {"color": "red", "n": "9"}),
            ]
            for state, tags in cases:
                expected = [
                    p.id
                    for p in promises
                    if (state is None or p.state == state)
                    and all(p.tags.get(k) == v for k, v in tags.items())
                ]
                assert await search(store, state, tags) == expected, (state, tags)
            steps = await store.transact(plan)
            assert any(s.startswith("SEARCH t USING PRIMARY KEY (key=? AND value=?") for s in steps)
            assert not any(s.startswith(("SCAN p", "SCAN t", "SCAN promises")) for s in steps)
        finally:
            await store.close()

    asyncio.run(main())
