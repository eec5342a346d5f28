"""PostgreSQL-specific behaviour (always runs, on throwaway clusters).

The seed's command line and YAML, migrations racing at start, the password kept out of every
message, and a database outage while the server runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from resonate_server.records import Task
from resonate_server.store import StoreTx
from resonate_store_postgres.store import MIN_LANES, PgTx, PostgresStore, lanes_wanted

from .conftest import ServerProcess, pg_cluster, resonate, wait_for
from .group_commit import one_failure_in_a_batch, promise, promise_ids
from .pg import SUPERUSER, PostgresCluster

FAR = 2**62


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> PostgresCluster:
    return pg_cluster(request.config)  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def one_lane(cluster: PostgresCluster, database: str) -> AsyncIterator[PostgresStore]:
    """A started store with a single lane, so that concurrent transactions queue into batches."""
    store = PostgresStore(cluster.host, cluster.port, database, SUPERUSER, "", pool_size=1)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def hold(tx: StoreTx) -> str:
    """Keeps a one-lane store's only lane busy for 0.2 s, so that what comes next queues up."""
    await asyncio.sleep(0.2)
    return "held"


async def batch(store: PostgresStore, *fns: Any) -> list[Any]:
    """Run ``fns`` on a one-lane store as one batch (queued behind :func:`hold`)."""
    first = asyncio.ensure_future(store.transact(hold))
    await asyncio.sleep(0.05)
    results = await asyncio.gather(*[store.transact(fn) for fn in fns])
    assert await first == "held"
    return results


def sent(store: PostgresStore) -> list[str]:
    """The statements a one-lane store sends from now on, as they are sent."""
    conn = store._lanes[0].conn
    assert conn is not None
    queries: list[str] = []
    conn.add_query_logger(lambda q: queries.append(q.query))
    return queries


@pytest.fixture
def private_cluster() -> Iterator[PostgresCluster]:
    """A cluster of this test's own, which the test may stop and start."""
    c = PostgresCluster().start()
    yield c
    c.destroy()


def test_seed_command_line_starts_on_postgres(make_server: Any, cluster: PostgresCluster) -> None:
    cluster.psql("CREATE ROLE resonate LOGIN PASSWORD 'secret'")
    db = cluster.create_database()
    cluster.psql(f'ALTER DATABASE "{db}" OWNER TO resonate')
    s = make_server(
        "--aio-store-postgres-enable",
        "--aio-store-postgres-host",
        cluster.host,
        "--aio-store-postgres-port",
        str(cluster.port),
        "--aio-store-postgres-database",
        db,
        "--aio-store-postgres-username",
        "resonate",
        "--aio-store-postgres-password",
        "secret",
        "--log-level",
        "debug",
        store=False,
    )
    c = s.client()
    assert c.get("/healthz").body == {"status": "ok", "store": "postgres"}
    assert c.call("promise.create", {"id": "p", "timeoutAt": FAR}).status == 200
    assert cluster.psql("SELECT state FROM promises WHERE id = 'p'", db) == "pending"
    assert "secret" not in s.log()


def test_seed_yaml_starts_on_postgres(
    make_server: Any, cluster: PostgresCluster, workdir: Path
) -> None:
    db = cluster.create_database()
    (workdir / "resonate.yaml").write_text(
        "aio:\n  store:\n    postgres:\n      enable: true\n"
        f'      host: "{cluster.host}"\n      port: {cluster.port}\n'
        f'      database: "{db}"\n      username: "postgres"\n      password: "secret"\n'
        '      query: "sslmode=disable"\n      pool_size: 3\n'
    )
    c = make_server(store=False).client()
    assert c.get("/healthz").body == {"status": "ok", "store": "postgres"}
    assert c.call("promise.create", {"id": "y", "timeoutAt": FAR}).status == 200


def test_a_socket_directory_as_host(make_server: Any, cluster: PostgresCluster) -> None:
    """A host that is a directory (``/var/run/postgresql``, say) reaches PostgreSQL over the
    Unix socket there, the port naming the socket file: a database on the same machine."""
    db = cluster.create_database()
    s = make_server(
        *("--aio-store-postgres-enable", "--aio-store-postgres-host", str(cluster.dir)),
        *("--aio-store-postgres-port", str(cluster.port), "--aio-store-postgres-database", db),
        *("--aio-store-postgres-username", SUPERUSER),
        store=False,
    )
    c = s.client()
    assert c.get("/healthz").body == {"status": "ok", "store": "postgres"}
    assert c.call("promise.create", {"id": "p", "timeoutAt": FAR}).status == 200
    assert cluster.psql("SELECT state FROM promises WHERE id = 'p'", db) == "pending"
    over = cluster.psql(
        "SELECT DISTINCT client_addr IS NULL FROM pg_stat_activity "
        f"WHERE datname = '{db}' AND application_name = 'resonate-server'",
        db,
    )
    assert over == "t", over  # Unix-socket connections have no client address


def test_password_never_in_errors(cluster: PostgresCluster, workdir: Path) -> None:
    out = resonate(
        "serve",
        "--aio-store-postgres-enable",
        "--aio-store-postgres-host",
        cluster.host,
        "--aio-store-postgres-port",
        str(cluster.port),
        "--aio-store-postgres-database",
        "does_not_exist",
        "--aio-store-postgres-username",
        "nobody",
        "--aio-store-postgres-password",
        "hunter2-secret",
        "--api-http-port",
        "0",
        cwd=workdir,
    )
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("resonate: error: cannot connect to PostgreSQL at "), last
    assert "hunter2-secret" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_servers_starting_at_once_migrate_once(make_server: Any, cluster: PostgresCluster) -> None:
    db = cluster.create_database()
    flags = cluster.flags(db)
    servers: list[ServerProcess] = [make_server(*flags, store=False, wait=False) for _ in range(3)]
    for s in servers:
        s.wait_ready()
    assert (
        cluster.psql(
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM resonate_schema", db
        )
        == "1,2"
    )
    out = resonate("migrate", "status", *flags)
    assert out.stdout.splitlines() == [
        "1 applied  initial schema",
        "2 applied  promise tag index (SQLite)",
    ], out.stderr


def test_migrate_off_refuses_a_stale_schema(cluster: PostgresCluster, workdir: Path) -> None:
    flags = cluster.flags(cluster.create_database())
    out = resonate(
        "serve", *flags, "--no-aio-store-postgres-migrate", "--api-http-port", "0", cwd=workdir
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "resonate: error: the database schema needs migrations [1, 2]: run `resonate migrate "
        "apply` (or set aio.store.postgres.migrate)"
    )
    assert resonate("migrate", "status", *flags).stdout.splitlines() == [
        "1 pending  initial schema",
        "2 pending  promise tag index (SQLite)",
    ]
    assert resonate("migrate", "apply", *flags).stdout.splitlines() == [
        "applied 1: initial schema",
        "applied 2: promise tag index (SQLite)",
        "1 applied  initial schema",
        "2 applied  promise tag index (SQLite)",
    ]


def test_outage_gives_503_and_recovers(make_server: Any, private_cluster: PostgresCluster) -> None:
    db = private_cluster.create_database()
    s = make_server(*private_cluster.flags(db), "--health-timeout", "1s", store=False)
    c = s.client()
    acked = {}
    for i in range(20):
        reply = c.call("promise.create", {"id": f"before-{i}", "timeoutAt": FAR})
        assert reply.status == 200
        acked[f"before-{i}"] = reply.data["promise"]

    private_cluster.pg_ctl("stop")
    healthz = c.get("/healthz")
    assert healthz.status == 503 and healthz.body["status"] == "unavailable"
    reply = c.call("promise.create", {"id": "during", "timeoutAt": FAR})
    assert reply.status == 503
    assert reply.data.startswith("Store unavailable: ")
    assert "Traceback" not in reply.data
    time.sleep(1.5)  # the background loops keep failing meanwhile; the server must stay up
    assert s.proc is not None and s.proc.poll() is None

    private_cluster.pg_ctl("start")
    deadline = time.monotonic() + 15
    while c.get("/healthz").status != 200:
        assert time.monotonic() < deadline, "the server did not reconnect"
        time.sleep(0.1)
    for pid, record in acked.items():
        got = c.call("promise.get", {"id": pid})
        assert got.status == 200 and got.data["promise"] == record
    assert c.call("promise.create", {"id": "after", "timeoutAt": FAR}).status == 200
    log = s.log()
    assert "Traceback" not in log
    assert log.count("backing off") <= 2, "background loops should log an outage once each"


def test_outage_under_load_loses_no_acknowledged_write(
    make_server: Any, private_cluster: PostgresCluster
) -> None:
    db = private_cluster.create_database()
    s = make_server(*private_cluster.flags(db), store=False)
    acked: dict[str, dict[str, Any]] = {}
    statuses: set[int] = set()
    unexpected: list[Any] = []
    stop = threading.Event()

    def load(n: int) -> None:
        c = s.client()
        i = 0
        while not stop.is_set():
            i += 1
            reply = c.call("promise.create", {"id": f"w{n}-{i}", "timeoutAt": FAR})
            statuses.add(reply.status)
            if reply.status not in (200, 503):
                unexpected.append((reply.status, reply.data))
            if reply.status == 200:
                acked[f"w{n}-{i}"] = reply.data["promise"]

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    private_cluster.pg_ctl("stop")
    time.sleep(0.5)
    private_cluster.pg_ctl("start")
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(30)
    assert statuses <= {200, 503}, unexpected[:5]
    c = s.client()
    missing = [
        pid
        for pid, rec in acked.items()
        if c.call("promise.get", {"id": pid}).data != {"promise": rec}
    ]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"


def test_a_failing_transaction_never_undoes_its_batch(cluster: PostgresCluster) -> None:
    """Group commit: transactions queued on one lane share a commit; one raising is run alone."""
    database = cluster.create_database()

    async def main() -> None:
        async with one_lane(cluster, database) as store:
            await one_failure_in_a_batch(store, hold)

    asyncio.run(main())


def test_a_transaction_opened_for_canceled_work_is_rolled_back(cluster: PostgresCluster) -> None:
    """A commit with work queued opens the next transaction at once (``COMMIT; BEGIN``); when
    that work is canceled before it runs, the lane must not sit idle inside the transaction."""
    database = cluster.create_database()

    def idle_in_transaction() -> str:
        return cluster.psql(  # type: ignore[no-any-return]
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'resonate-server' "
            "AND state = 'idle in transaction'",
            database,
        )

    async def hold(tx: StoreTx) -> str:
        await tx.insert_promise(promise("held"))
        await asyncio.sleep(0.2)
        return "held"

    async def create(tx: StoreTx) -> None:
        await tx.insert_promise(promise("canceled"))

    async def main() -> None:
        async with one_lane(cluster, database) as store:
            first = asyncio.ensure_future(store.transact(hold))
            await asyncio.sleep(0.05)
            queued = asyncio.ensure_future(store.transact(create))
            await asyncio.sleep(0.01)
            queued.cancel()
            assert await first == "held"
            await asyncio.sleep(0.3)
            assert idle_in_transaction() == "0"
            assert await store.transact(promise_ids) == ["held"]

    asyncio.run(main())


def test_deferred_writes_keep_their_order_and_are_read_back(cluster: PostgresCluster) -> None:
    """Writes the engine does not read wait in a buffer and go out as one statement: a second
    write to the same table, and any read, must still see every earlier write."""
    database = cluster.create_database()

    async def writes(tx: StoreTx) -> tuple[str | None, str | None, int, list[str]]:
        p = promise("p")
        await tx.insert_promise(p)
        await tx.insert_task(Task("p", "pending", 0))
        await tx.update_task(Task("p", "acquired", 1, 99, 1, "worker", 10))
        await tx.insert_callback("p", "q", ready=False)
        p.state, p.value, p.settled_at = "resolved", {"data": "x"}, 5
        await tx.update_promise(p)
        settled, task = await tx.get_promise_task("p")
        ready = await tx.ready_callbacks("p")
        await tx.insert_listener("p", "poll://any@g")
        await tx.delete_callbacks("q", ready_only=True)
        return (
            settled.state if settled else None,
            task.state if task else None,
            task.version if task else -1,
            ready,
        )

    async def after(tx: StoreTx) -> tuple[list[tuple[str, str, bool]], list[tuple[str, str]]]:
        snap = await tx.snapshot()
        return snap.callbacks, snap.listeners

    async def main() -> None:
        async with one_lane(cluster, database) as store:
            assert await store.transact(writes) == ("resolved", "acquired", 1, ["q"])
            assert await store.transact(after) == ([], [("p", "poll://any@g")])

    asyncio.run(main())


class _RoundTrips:
    """An asyncpg connection that counts the statements sent through it."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.sent = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.conn, name)
        if name in ("execute", "fetch", "fetchrow", "fetchval"):
            self.sent += 1
        return method


def test_buffered_writes_ride_with_a_statement_on_other_tables(cluster: PostgresCluster) -> None:
    """Buffered writes join the next statement when it touches none of their tables (no round
    trip of their own); a statement on one of their tables goes after them and sees them."""
    database = cluster.create_database()
    address, later = "poll://any@g", "poll://any@h"

    async def body(tx: StoreTx) -> list[Any]:
        assert isinstance(tx, PgTx)
        wire = _RoundTrips(tx.c)
        t = PgTx(wire)  # type: ignore[arg-type]
        p = promise("p")
        await t.insert_promise(p)
        await t.insert_listener("p", address)
        await t.flush()
        before = wire.sent
        p.state, p.value, p.settled_at = "resolved", {"data": "x"}, 5
        await t.update_promise(p)
        await t.insert_task(Task("p", "pending", 0))
        moved = await t.unblock_listeners("p")
        joined = wire.sent - before
        await t.insert_listener("p", later)
        before = wire.sent
        settled, task = await t.get_promise_task("p")  # a locking read joins writes too
        joined += wire.sent - before
        await t.update_task(Task("p", "acquired", 1, 99, 1, "worker", 10))
        before = wire.sent
        updated = await t.get_task("p")
        apart = wire.sent - before
        snap = await t.snapshot()
        return [
            moved,
            joined,
            settled.state if settled else None,
            task.state if task else None,
            updated.state if updated else None,
            apart,
            snap.listeners,
            snap.unblocks,
        ]

    async def main() -> None:
        async with one_lane(cluster, database) as store:
            assert await store.transact(body) == [
                True,
                2,
                "resolved",
                "pending",
                "acquired",
                2,
                [("p", later)],
                [("p", address)],
            ]

    asyncio.run(main())


def test_a_settlement_releases_its_waiters_with_its_writes_in_one_statement(
    cluster: PostgresCluster,
) -> None:
    """After a settlement, the promise and task updates, the fulfilled task's own callbacks,
    the listeners moved to the outbox and the callbacks marked ready all go in one statement."""
    database = cluster.create_database()

    async def setup(tx: StoreTx) -> None:
        for pid in ("p", "q", "r"):
            await tx.insert_promise(promise(pid))
        await tx.insert_task(Task("p", "acquired", 1))
        await tx.insert_callback("p", "q", ready=False)  # q awaits p
        await tx.insert_callback("r", "p", ready=False)  # p's task awaits r
        await tx.insert_listener("p", "poll://any@g")

    async def body(tx: StoreTx) -> list[Any]:
        assert isinstance(tx, PgTx)
        wire = _RoundTrips(tx.c)
        t = PgTx(wire)  # type: ignore[arg-type]
        p = promise("p")
        p.state, p.value, p.settled_at = "resolved", {"data": "x"}, 5
        await t.update_promise(p)
        await t.update_task(Task("p", "fulfilled", 1))
        released = await t.release_waiters("p", fulfilled=True)
        again = await t.release_waiters("q", fulfilled=False)
        sent = wire.sent
        snap = await t.snapshot()
        return [
            released,
            again,
            sent,
            [(x.id, x.state) for x in snap.promises],
            [(x.id, x.state) for x in snap.tasks],
            snap.callbacks,
            snap.listeners,
            snap.unblocks,
        ]

    async def main() -> None:
        async with one_lane(cluster, database) as store:
            await store.transact(setup)
            assert await store.transact(body) == [
                (True, ["q"]),
                (False, []),
                2,
                [("p", "resolved"), ("q", "pending"), ("r", "pending")],
                [("p", "fulfilled")],
                [("p", "q", True)],
                [],
                [("p", "poll://any@g")],
            ]

    asyncio.run(main())


def test_a_statement_stuck_on_a_lock_gets_503_and_others_go_on(
    make_server: Any, cluster: PostgresCluster
) -> None:
    """A row lock held elsewhere: the request waits statement_timeout, then 503; no 500, no hang."""
    db = cluster.create_database()
    s = make_server(*cluster.flags(db), "--aio-store-postgres-statement-timeout", "1s", store=False)
    c = s.client()
    assert c.call("promise.create", {"id": "held", "timeoutAt": FAR}).status == 200
    holder = subprocess.Popen(
        [
            "psql",
            "-h",
            cluster.host,
            "-p",
            str(cluster.port),
            "-U",
            SUPERUSER,
            "-d",
            db,
            "-c",
            "BEGIN; SELECT id FROM promises WHERE id = 'held' FOR UPDATE; "
            "SELECT pg_sleep(6); COMMIT;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: (
                cluster.psql(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(6)%' "
                    "AND state = 'active' AND pid <> pg_backend_pid()",
                    db,
                )
                == "1"
            )
        )
        started = time.monotonic()
        stuck = c.call("promise.settle", {"id": "held", "state": "resolved"})
        assert stuck.status == 503, stuck
        assert "statement_timeout" in stuck.body["data"]
        assert time.monotonic() - started < 5
        assert c.call("promise.create", {"id": "free", "timeoutAt": FAR}).status == 200
    finally:
        holder.wait(30)
    done = c.call("promise.settle", {"id": "held", "state": "resolved"})
    assert done.status == 200 and done.body["data"]["promise"]["state"] == "resolved"
    assert "Traceback" not in s.log()


def test_a_batch_of_creates_inserts_its_promises_in_one_statement(
    cluster: PostgresCluster,
) -> None:
    """Transaction functions of one batch that start with a promise insert, for distinct ids,
    share one multi-row insert; each still learns whether its own id was new. Duplicate ids in
    a batch, or other first statements, keep the one-by-one path, with the same outcomes."""
    database = cluster.create_database()

    def create(pid: str) -> Any:
        async def fn(tx: StoreTx) -> bool:
            return await tx.insert_promise(promise(pid))

        return fn

    async def read(tx: StoreTx) -> list[str]:
        return await promise_ids(tx)

    async def main() -> None:
        async with one_lane(cluster, database) as store:
            assert await store.transact(create("x")) is True
            queries = sent(store)

            got = await batch(store, create("a"), create("x"), read, create("b"))
            # the read was queued before b's create, and ran after the batch's one insert
            assert got == [True, False, ["a", "b", "x"], True]
            inserts = [q for q in queries if q.startswith("INSERT INTO promises")]
            assert len(inserts) == 1 and "unnest" in inserts[0], queries

            queries.clear()
            got = await batch(store, create("d"), read, create("d"), create("e"))
            assert got == [True, ["a", "b", "d", "x"], False, True]
            inserts = [q for q in queries if q.startswith("INSERT INTO promises")]
            assert len(inserts) == 3 and not any("unnest" in q for q in inserts), queries
            assert await store.transact(promise_ids) == ["a", "b", "d", "e", "x"]

    asyncio.run(main())


def test_a_batch_reads_its_rows_in_one_statement_and_never_stale(
    cluster: PostgresCluster,
) -> None:
    """Functions of one batch whose first statement is the same by-id read (a promise, or a
    promise with its task) share one locking read; each gets its own row, or None. A function
    whose row an earlier function of the batch wrote reads it again, and sees that write."""
    database = cluster.create_database()

    async def setup(tx: StoreTx) -> None:
        for pid in ("a", "b", "c"):
            await tx.insert_promise(promise(pid))
            await tx.insert_task(Task(pid, "pending", 1))

    def read_task(pid: str) -> Any:
        async def fn(tx: StoreTx) -> tuple[str | None, str | None]:
            prom, task = await tx.get_promise_task(pid)
            return (prom.state if prom else None, task.state if task else None)

        return fn

    def read_promise(pid: str) -> Any:
        async def fn(tx: StoreTx) -> str | None:
            prom = await tx.get_promise(pid)
            return prom.state if prom else None

        return fn

    def settle(pid: str) -> Any:
        async def fn(tx: StoreTx) -> str | None:
            prom, task = await tx.get_promise_task(pid)
            assert prom is not None and task is not None
            prom.state, prom.settled_at = "resolved", 5
            await tx.update_promise(prom)
            task.state = "fulfilled"
            await tx.update_task(task)
            return "settled"

        return fn

    def reads(queries: list[str]) -> list[str]:
        return [q for q in queries if q.startswith("SELECT") and "FROM promises" in q]

    async def main() -> None:
        async with one_lane(cluster, database) as store:
            await store.transact(setup)
            queries = sent(store)

            got = await batch(
                store,
                read_task("a"),
                read_promise("b"),
                read_task("x"),
                read_promise("y"),
                read_task("c"),
            )
            assert got == [
                ("pending", "pending"),
                "pending",
                (None, None),
                None,
                ("pending", "pending"),
            ]
            # one join for a, x and c, one promise read for b and y; x's missing task makes
            # it look for the promise alone
            assert len(reads(queries)) == 3, queries
            assert sum("unnest" in q for q in reads(queries)) == 2, queries

            queries.clear()
            got = await batch(store, settle("a"), read_task("a"), read_promise("a"), read_task("b"))
            assert got == ["settled", ("resolved", "fulfilled"), "resolved", ("pending", "pending")]
            # the shared join, then a's two readers read again after settle("a") wrote it
            assert len(reads(queries)) == 3, queries

    asyncio.run(main())


def test_a_batch_sends_its_functions_writes_together_and_in_order(
    cluster: PostgresCluster,
) -> None:
    """The writes of a batch's functions wait in one buffer and go out together, in as few
    statements as the rows they touch allow: writes of one kind on different rows become one
    clause on arrays. A write or statement that may touch a row a buffered write touches goes
    after it, so every function sees what it would have seen had the functions run one by
    one."""
    database = cluster.create_database()

    async def setup(tx: StoreTx) -> None:
        for pid in ("a", "b", "c", "d", "e", "w"):
            await tx.insert_promise(promise(pid))
            await tx.insert_task(Task(pid, "pending", 0))
        await tx.insert_callback("e", "d", ready=False)  # d awaits e
        await tx.insert_callback("w", "a", ready=True)  # a has a ready callback

    def acquire(pid: str) -> Any:
        async def fn(tx: StoreTx) -> int:
            _, task = await tx.get_promise_task(pid)
            assert task is not None
            task.state, task.version = "acquired", task.version + 1
            await tx.update_task(task)
            await tx.delete_callbacks(pid, ready_only=True)
            await tx.insert_listener(pid, f"poll://any@{pid}-{task.version}")
            return task.version

        return fn

    def listen(pid: str, address: str) -> Any:
        async def fn(tx: StoreTx) -> None:
            await tx.get_promise(pid)
            await tx.insert_listener(pid, address)

        return fn

    def release(pid: str) -> Any:
        async def fn(tx: StoreTx) -> tuple[bool, list[str]]:
            await tx.get_promise(pid)
            return await tx.release_waiters(pid, fulfilled=False)

        return fn

    def statements(queries: list[str]) -> list[str]:
        return [q for q in queries if q not in ("BEGIN", "COMMIT", "COMMIT; BEGIN")]

    async def main() -> None:
        async with one_lane(cluster, database) as store:
            await store.transact(setup)
            queries = sent(store)

            got = await batch(store, acquire("a"), acquire("b"), acquire("c"))
            assert got == [1, 1, 1]
            # one shared read, then the nine writes in one statement: the task updates and the
            # listener inserts as one clause each, the three deletes (no bulk form) apart
            assert len(statements(queries)) == 2, queries
            assert statements(queries)[1].count(" AS (") == 5, queries

            queries.clear()
            got = await batch(
                store,
                acquire("a"),  # writes a's row, and a second listener on a
                release("a"),  # reads a again (written), and moves both listeners
                acquire("a"),  # reads a again too, and sees the first acquire's version
                listen("c", "poll://any@c-x"),  # writes no promise or task row
                release("c"),  # uses its shared read, and must still move c-x
                acquire("d"),  # drops d's ready callbacks: none, (e, d) is not ready
                release("e"),  # marks (e, d) ready; may join the writes above
            )
            assert got == [2, (True, []), 3, None, (True, []), 1, (False, ["d"])], queries
            snap = await store.transact(lambda tx: tx.snapshot())
            assert [(t.id, t.state, t.version) for t in snap.tasks] == [
                ("a", "acquired", 3),
                ("b", "acquired", 1),
                ("c", "acquired", 1),
                ("d", "acquired", 1),
                ("e", "pending", 0),
                ("w", "pending", 0),
            ]
            assert snap.callbacks == [("e", "d", True)]
            assert snap.listeners == [
                ("a", "poll://any@a-3"),
                ("b", "poll://any@b-1"),
                ("d", "poll://any@d-1"),
            ]
            assert snap.unblocks == [
                ("a", "poll://any@a-1"),
                ("a", "poll://any@a-2"),
                ("c", "poll://any@c-1"),
                ("c", "poll://any@c-x"),
            ]

    asyncio.run(main())


def test_lanes_wanted() -> None:
    """A busy loop drops a lane, down to the floor; a loop with room adds one back, but only
    when transactions waited in batches behind others."""
    assert lanes_wanted(10, 10, busy=0.95, waited=50) == 9
    assert lanes_wanted(MIN_LANES, 10, busy=0.95, waited=50) == MIN_LANES
    assert lanes_wanted(5, 10, busy=0.3, waited=4) == 6
    assert lanes_wanted(10, 10, busy=0.3, waited=4) == 10
    assert lanes_wanted(5, 10, busy=0.3, waited=0) == 5
    assert lanes_wanted(5, 10, busy=0.65, waited=4) == 5
    assert lanes_wanted(1, 1, busy=0.95, waited=9) == 1
    assert lanes_wanted(2, 2, busy=0.3, waited=9) == 2


def test_lanes_follow_the_event_loop(cluster: PostgresCluster) -> None:
    """While the event loop's thread computes, the store moves new transactions to fewer lanes;
    once the loop idles while transactions wait in batches behind slow ones, it uses every lane
    again. Transactions keep committing throughout."""
    database = cluster.create_database()

    async def read(tx: StoreTx) -> None:
        await tx.get_promise("x")

    async def slow(tx: StoreTx) -> None:
        await tx.get_promise("x")
        await asyncio.sleep(0.05)

    async def main() -> None:
        store = PostgresStore(cluster.host, cluster.port, database, SUPERUSER, "", pool_size=8)
        await store.start()
        try:
            assert store.lanes_in_use == 8
            deadline = time.monotonic() + 10
            n = 0
            while store.lanes_in_use > MIN_LANES:
                assert time.monotonic() < deadline, "the lanes did not follow a busy loop"
                spin = time.monotonic() + 0.02
                while time.monotonic() < spin:
                    pass
                await store.transact(read, key=f"k{n}")
                n += 1
            assert store.stats().lanes == MIN_LANES
            deadline = time.monotonic() + 10
            while store.lanes_in_use < 8:
                assert time.monotonic() < deadline, "the lanes did not come back"
                await asyncio.gather(*(store.transact(slow, key=f"s{i}") for i in range(32)))
        finally:
            await store.close()

    asyncio.run(main())


def test_reads_run_beside_the_lanes(cluster: PostgresCluster) -> None:
    """``read`` (the searches) runs on a connection of its own: a transaction holding the only
    lane does not hold it up, and it sees what is committed, not what the lane has not."""
    database = cluster.create_database()

    async def hold(tx: StoreTx) -> None:
        await tx.insert_promise(promise("uncommitted"))
        await asyncio.sleep(1.0)

    async def main() -> None:
        async with one_lane(cluster, database) as store:
            assert await store.transact(lambda tx: tx.insert_promise(promise("committed")))
            held = asyncio.ensure_future(store.transact(hold))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            assert await store.read(promise_ids) == ["committed"]
            assert time.monotonic() - started < 0.5
            assert not held.done()
            await held
            assert await store.read(promise_ids) == ["committed", "uncommitted"]

    asyncio.run(main())


def test_outbox_claims_and_due_timeouts_keep_index_plans(cluster: PostgresCluster) -> None:
    """The unblock claim probes ``promises`` by primary key and the timeout scan uses
    ``ix_promises_due``, even with generic plans and statistics that count thousands of queued
    (since deleted) unblocks. Before, such statistics made each claim hash all of ``promises``,
    and the timeout scan's generic plan read the whole table."""
    database = cluster.create_database()

    def generic_plan(sql: str, args: tuple[Any, ...]) -> str:
        assert all(isinstance(a, int) for a in args), args
        return cluster.psql(
            f"PREPARE q AS {sql}; SET plan_cache_mode = force_generic_plan; "
            f"EXPLAIN EXECUTE q({', '.join(map(str, args))})",
            database,
        )

    async def main() -> list[tuple[str, tuple[Any, ...]]]:
        async with one_lane(cluster, database) as store:
            cluster.psql(
                "ALTER TABLE outgoing_unblock SET (autovacuum_enabled = off); "
                "INSERT INTO promises (id, state, param, value, tags, target, timeout_at, "
                "created_at) SELECT 'p' || g, 'pending', '{}', '{}', '{}', 'poll://any@w', g, 0 "
                "FROM generate_series(1, 20000) g; "
                "INSERT INTO outgoing_unblock SELECT 'p' || g, 'poll://any@w' "
                "FROM generate_series(1, 5000) g; ANALYZE; DELETE FROM outgoing_unblock; "
                "INSERT INTO outgoing_unblock VALUES ('p1', 'poll://any@a'), ('p2', 'poll://any@b')",
                database,
            )
            await store.ping()
            conn = store._lanes[0].conn
            assert conn is not None
            seen: list[tuple[str, tuple[Any, ...]]] = []
            conn.add_query_logger(lambda q: seen.append((q.query, tuple(q.args))))
            messages = await store.transact(lambda tx: tx.take_messages(100))
            assert sorted((m.address, m.promise.id) for m in messages if m.promise) == [
                ("poll://any@a", "p1"),
                ("poll://any@b", "p2"),
            ]
            due = await store.transact(lambda tx: tx.due_promises(FAR, 10))
            assert [p.id for p in due] == [f"p{i}" for i in range(1, 11)]
            return seen

    seen = asyncio.run(main())
    claim = [q for q in seen if "outgoing_unblock" in q[0]]
    scan = [q for q in seen if "timeout_at <=" in q[0] and "FROM promises" in q[0]]
    assert len(claim) == 1 and len(scan) == 1, seen
    plan = generic_plan(*claim[0])
    assert "promises_pkey" in plan and "Seq Scan on promises" not in plan, plan
    plan = generic_plan(*scan[0])
    assert "ix_promises_due" in plan and "Seq Scan on promises" not in plan, plan
