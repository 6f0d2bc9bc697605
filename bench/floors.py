"""The raw-client floor of measurement 1: the least work a client library needs for one lease.

Each floor does one acquire and one release with the backend's own client library and
nothing else: no validation, no JSON holder, no fencing token. It runs in the benchmark
process against the same server as planlagt's backend, so the two differ only in what
planlagt adds.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from typing import Any, Protocol

__all__ = ["FLOOR_DESCRIPTIONS", "Floor", "open_floor"]

FLOOR_TTL_MS = 30_000
FLOOR_TTL_S = 30

FLOOR_DESCRIPTIONS = {
    "redis": "SET key owner NX PX, then a compare-and-delete Lua script (EVALSHA)",
    "sqlite": "one write transaction (BEGIN IMMEDIATE, upsert if expired, COMMIT) to acquire, one to delete",
    "postgres": "SELECT pg_try_advisory_lock(k), then SELECT pg_advisory_unlock(k)",
    "etcd": "lease grant + create-if-absent transaction putting the key with the lease, then revoke (deletes the key)",
    "zookeeper": "create an ephemeral node, then delete it",
}

COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Floor(Protocol):
    def pair(self, key: str) -> None:
        """Acquire ``key`` and release it; raise ``RuntimeError`` when the acquire failed."""

    def close(self) -> None: ...


class RedisFloor:
    def __init__(self, server: Any) -> None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._client = server.client(retry=Retry(NoBackoff(), 0))
        self._delete = self._client.register_script(COMPARE_AND_DELETE)

    def pair(self, key: str) -> None:
        owner = secrets.token_hex(16)
        if not self._client.set(key, owner, nx=True, px=FLOOR_TTL_MS):
            raise RuntimeError(f"raw Redis SET NX on {key!r} failed: the key is held")
        self._delete(keys=[key], args=[owner])

    def close(self) -> None:
        self._client.close()


class SQLiteFloor:
    """Same file settings as the planlagt SQLite backend: WAL and ``synchronous=FULL``."""

    def __init__(self, path: str) -> None:
        self._connection = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS floor_lease (key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL)"
        )

    def pair(self, key: str) -> None:
        owner = secrets.token_hex(16)
        now = time.time()
        with self._write() as connection:
            cursor = connection.execute(
                "INSERT INTO floor_lease (key, owner, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires = excluded.expires "
                "WHERE floor_lease.expires <= ?",
                (key, owner, now + FLOOR_TTL_S, now),
            )
            if cursor.rowcount != 1:
                raise RuntimeError(f"raw SQLite acquire of {key!r} failed: the key is held")
        with self._write() as connection:
            connection.execute("DELETE FROM floor_lease WHERE key = ? AND owner = ?", (key, owner))

    def _write(self) -> Any:
        connection = self._connection

        class Transaction:
            def __enter__(self) -> sqlite3.Connection:
                connection.execute("BEGIN IMMEDIATE")
                return connection

            def __exit__(self, exc_type: Any, *rest: Any) -> None:
                connection.execute("ROLLBACK" if exc_type else "COMMIT")

        return Transaction()

    def close(self) -> None:
        self._connection.close()


class PostgresFloor:
    def __init__(self, url: str) -> None:
        import psycopg

        self._connection = psycopg.connect(url.split("?", 1)[0], autocommit=True)

    def pair(self, key: str) -> None:
        lock_id = hash(key) & 0x7FFF_FFFF_FFFF_FFFF
        held = self._connection.execute("SELECT pg_try_advisory_lock(%s)", (lock_id,)).fetchone()
        if not held or not held[0]:
            raise RuntimeError(f"raw pg_try_advisory_lock for {key!r} failed: the lock is held")
        self._connection.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))

    def close(self) -> None:
        self._connection.close()


class EtcdFloor:
    def __init__(self, endpoint: str) -> None:
        import pyetcd
        from pyetcd.transactions import Create, Put

        host, port = endpoint.rsplit(":", 1)
        self._client = pyetcd.client(host=host, port=int(port))
        self._create = Create
        self._put = Put

    def pair(self, key: str) -> None:
        lease = self._client.lease(FLOOR_TTL_S)
        created, _ = self._client.transaction(
            compare=[self._create(key) == 0],
            success=[self._client.transactions.put(key, secrets.token_hex(16), lease=lease)],
            failure=[],
        )
        if not created:
            raise RuntimeError(f"raw etcd create-if-absent of {key!r} failed: the key exists")
        lease.revoke()

    def close(self) -> None:
        self._client.close()


class ZooKeeperFloor:
    def __init__(self, hosts: str) -> None:
        from kazoo.client import KazooClient

        self._client = KazooClient(hosts=hosts)
        self._client.start(timeout=10)
        self._client.ensure_path("/planlagt-floor")

    def pair(self, key: str) -> None:
        path = self._client.create(f"/planlagt-floor/{key}", b"", ephemeral=True)
        self._client.delete(path)

    def close(self) -> None:
        self._client.stop()
        self._client.close()


def open_floor(backend: str, servers: Any, part: str) -> Floor:
    """Return the raw-client floor of ``backend`` on the run's server (a new file for SQLite)."""
    if backend == "redis":
        return RedisFloor(servers.server("redis"))
    if backend == "sqlite":
        return SQLiteFloor(str(servers.workdir / f"{part}-floor.db"))
    if backend == "postgres":
        return PostgresFloor(servers.server("postgres").url)
    if backend == "etcd":
        return EtcdFloor(servers.server("etcd").endpoint)
    if backend == "zookeeper":
        return ZooKeeperFloor(servers.server("zookeeper").address)
    raise ValueError(f"no raw-client floor for backend {backend!r}")
