"""The database: one code path for SQLite and PostgreSQL, over their DB-API drivers.

Everything that differs between the two lives in :class:`Dialect`: DDL types, the claim's
``FOR UPDATE SKIP LOCKED``, the parameter style, the event-append lock and NOTIFY. The rest of
Swarm writes plain SQL with ``:name`` parameters and runs it inside :meth:`Database.tx`, which
on SQLite begins with ``BEGIN IMMEDIATE`` so two writers never deadlock on a lock upgrade.

Each thread keeps one connection open, so a call costs no pool checkout: on SQLite the server
runs every statement on its event-loop thread (WAL lets other threads read at once), on
PostgreSQL the agent routes' statements run in a few worker threads (see ``api/workers.py``).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from swarmstack.errors import Unavailable, UsageError

NOTIFY_CHANNEL = "swarm"
# Serializes event appends on PostgreSQL so that sequence order is commit order: a reader that
# saw seq N can then never miss a row with a smaller seq that commits later.
EVENTS_LOCK_KEY = 0x5357524D
MIGRATIONS_LOCK_KEY = EVENTS_LOCK_KEY + 1

Row = dict[str, Any]
Params = dict[str, Any] | None
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True)
class Dialect:
    name: str
    skip_locked: str  # appended to the claim's SELECT
    for_update: str  # appended to a SELECT that is followed by an UPDATE of the same row
    autoincrement_pk: str
    real: str
    bigint: str

    def sql(self, statement: str) -> str:
        """Our ``:name`` parameters in the driver's own style."""
        if self.name == "postgresql":
            return _NAMED.sub(r"%(\1)s", statement)
        return statement


# Rows are never deleted, so SQLite's rowid already grows without AUTOINCREMENT's extra write.
SQLITE = Dialect("sqlite", "", "", "INTEGER PRIMARY KEY", "REAL", "INTEGER")
POSTGRESQL = Dialect(
    "postgresql",
    "FOR UPDATE SKIP LOCKED",
    "FOR UPDATE",
    "BIGSERIAL PRIMARY KEY",
    "DOUBLE PRECISION",
    "BIGINT",
)


class Tx:
    """One transaction's handle: run statements, read rows as dicts."""

    def __init__(self, conn: Any, dialect: Dialect, cache: dict[str, str]) -> None:
        self._conn = conn
        self.dialect = dialect
        self._cache = cache

    def _sql(self, statement: str) -> str:
        sql = self._cache.get(statement)
        if sql is None:
            sql = self._cache[statement] = self.dialect.sql(statement)
        return sql

    def execute(self, statement: str, params: Params = None) -> Any:
        cursor = self._conn.cursor()
        cursor.execute(self._sql(statement), params or {})
        return cursor

    def executemany(self, statement: str, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self._conn.cursor().executemany(self._sql(statement), rows)

    def all(self, statement: str, params: Params = None) -> list[Row]:
        cursor = self.execute(statement, params)
        return _as_dicts(cursor, cursor.fetchall())

    def one(self, statement: str, params: Params = None) -> Row | None:
        cursor = self.execute(statement, params)
        row = cursor.fetchone()
        if row is None:
            return None
        rest = cursor.fetchall()  # drain, so RETURNING statements finish on every driver
        del rest
        return _as_dicts(cursor, [row])[0]

    def scalar(self, statement: str, params: Params = None) -> Any:
        row = self.execute(statement, params).fetchone()
        if row is None:
            return None
        return next(iter(row.values())) if isinstance(row, dict) else row[0]

    def before_events(self, ready: int) -> None:
        """On PostgreSQL: serialize event appends until commit, and NOTIFY the listeners
        (delivered at commit) of how many tickets became ready."""
        if self.dialect.name == "postgresql":
            self.execute(
                "SELECT pg_advisory_xact_lock(:k), pg_notify(:c, :p)",
                {"k": EVENTS_LOCK_KEY, "c": NOTIFY_CHANNEL, "p": str(ready)},
            )


def _as_dicts(cursor: Any, rows: list[Any]) -> list[Row]:
    """Rows as dicts. psycopg connections make dicts already (``dict_row`` reads the column
    names straight off the result; its ``description`` builds objects at every access);
    sqlite3 rows are tuples, named from the description. Read the rows first: in pipeline
    mode the description arrives with them."""
    if not rows or isinstance(rows[0], dict):
        return rows
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in rows]


def _returns_rows(cursor: Any) -> bool:
    result = getattr(cursor, "pgresult", None)  # psycopg: ask the result, not the description
    if result is not None:
        return bool(result.nfields)
    return cursor.description is not None


def _sqlite_path(url: str) -> str:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``sqlite://`` (memory)."""
    rest = url[len("sqlite://") :]
    if rest in ("", "/", "/:memory:"):
        return ":memory:"
    return rest[1:] if rest.startswith("/") else rest


class Database:
    """A URL, its dialect, a connection per thread, and the transaction context managers."""

    def __init__(
        self, url: str, *, sqlite_synchronous: str = "NORMAL", busy_timeout_ms: int = 10_000
    ) -> None:
        scheme = urlsplit(url).scheme.split("+")[0]
        if scheme == "sqlite":
            self.dialect = SQLITE
            self._path = _sqlite_path(url)
            if self._path == ":memory:":
                raise UsageError("an in-memory SQLite database cannot be shared: use a file")
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        elif scheme in ("postgresql", "postgres"):
            self.dialect = POSTGRESQL
            self.conninfo = "postgresql:" + url.split(":", 1)[1]
        else:
            raise UsageError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")
        self.url = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
        self._synchronous = sqlite_synchronous
        self._busy_ms = busy_timeout_ms
        self._local = threading.local()
        self._all: list[Any] = []
        self._owners: dict[Any, threading.Thread] = {}  # each connection's thread
        self._lock = threading.Lock()
        self._cache: dict[str, str] = {}
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()

    def _connect(self) -> Any:
        conn: Any
        if self.dialect is SQLITE:
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_ms / 1000,
                isolation_level=None,  # we issue BEGIN ourselves; pysqlite's is DEFERRED
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_ms)}")
            conn.execute("PRAGMA foreign_keys=ON")
            if self._checkpointer is not None:
                conn.execute("PRAGMA wal_autocheckpoint=0")
        else:
            import psycopg
            from psycopg.rows import dict_row

            conn = psycopg.connect(
                self.conninfo, autocommit=True, connect_timeout=10, row_factory=dict_row
            )
        with self._lock:
            # A thread that ended cannot use its connection again: close it, or every
            # short-lived thread (a test client's portal, an executor's) would keep one open.
            ended = [c for c, t in self._owners.items() if not t.is_alive()]
            for stale in ended:
                del self._owners[stale]
                if stale in self._all:
                    self._all.remove(stale)
            self._all.append(conn)
            self._owners[conn] = threading.current_thread()
        for stale in ended:
            try:
                stale.close()
            except Exception:  # closing is best effort
                continue
        return conn

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._local.conn = self._connect()
            except (sqlite3.Error, OSError) as exc:
                raise Unavailable(f"cannot open {self.url}: {exc}") from exc
            except Exception as exc:  # psycopg.OperationalError, imported lazily
                raise Unavailable(f"cannot connect to {self.url}: {exc}") from exc
        return conn

    def _discard(self, conn: Any) -> None:
        self._local.conn = None
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
            self._owners.pop(conn, None)
        try:
            conn.close()
        except Exception:  # already broken; nothing to save
            return

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[Tx]:
        conn = self._connection()
        # On PostgreSQL the whole transaction runs in pipeline mode: statements whose results
        # are not read yet travel together, so BEGIN rides with the first query and the
        # event append rides with COMMIT — a claim costs two round trips, not six.
        pipeline = conn.pipeline() if self.dialect is POSTGRESQL else nullcontext()
        try:
            with pipeline:
                conn.execute(begin)
                yield Tx(conn, self.dialect, self._cache)
                conn.execute("COMMIT")
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except Exception:
                self._discard(conn)
            if _is_connection_error(exc):
                self._discard(conn)
                raise _unavailable(self.url, exc) from exc
            raise

    def execute_once(self, statement: str, params: Params = None) -> Row | None:
        """One statement in its own implicit transaction; its first row, if any."""
        conn = self._connection()
        sql = self._cache.get(statement)
        if sql is None:
            sql = self._cache[statement] = self.dialect.sql(statement)
        try:
            cursor = conn.cursor()
            cursor.execute(sql, params or {})
            row = cursor.fetchone() if _returns_rows(cursor) else None
            return None if row is None else _as_dicts(cursor, [row])[0]
        except Exception as exc:
            if _is_connection_error(exc):
                self._discard(conn)
                raise _unavailable(self.url, exc) from exc
            raise

    def tx(self) -> Any:
        """A write transaction: committed on success, rolled back on any exception."""
        return self._transaction("BEGIN IMMEDIATE" if self.dialect is SQLITE else "BEGIN")

    def read(self) -> Any:
        """A read transaction: one consistent snapshot, no write lock."""
        return self._transaction("BEGIN")

    def checkpoint_in_background(self, interval_s: float = 0.25) -> None:
        """SQLite: move WAL checkpoints off the request path, into a thread of their own.

        A checkpoint copies the WAL into the database file and syncs it; left to SQLite, the
        commit that crosses the threshold pays for that, and on a slow disk one unlucky request
        waits for the sync. The thread's connection releases the GIL while it writes."""
        if self.dialect is not SQLITE or self._checkpointer is not None:
            return
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(interval_s,), name="swarm-checkpoint", daemon=True
        )
        with self._lock:
            for conn in self._all:
                conn.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer.start()

    def _checkpoint_loop(self, interval_s: float) -> None:
        conn = sqlite3.connect(self._path, timeout=self._busy_ms / 1000, isolation_level=None)
        try:
            while not self._stop_checkpoints.wait(interval_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:  # busy or locked: the next round catches up
                    continue
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            return
        finally:
            conn.close()

    def close(self) -> None:
        if self._checkpointer is not None:
            self._stop_checkpoints.set()
            self._checkpointer.join(timeout=10)
            self._checkpointer = None
        with self._lock:
            conns, self._all = self._all, []
            self._owners.clear()
        for conn in conns:
            try:
                conn.close()
            except Exception:  # closing is best effort
                continue
        self._local = threading.local()


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return True
    module = type(exc).__module__
    return module.startswith("psycopg") and type(exc).__name__ in (
        "OperationalError",
        "InterfaceError",
    )


def _unavailable(url: str, exc: BaseException) -> Unavailable:
    return Unavailable(f"database {url} unavailable: {exc}")


# -- migrations ----------------------------------------------------------------------------

Migration = Callable[[Tx], None]


def migrate(db: Database, migrations: list[Migration]) -> int:
    """Apply the migrations not yet applied, each in its own transaction; return the version.

    Concurrent starters serialize on the write lock (SQLite) or an advisory lock (PostgreSQL),
    so two replicas never apply the same step twice.
    """

    def lock(tx: Tx) -> None:
        if db.dialect is POSTGRESQL:
            tx.execute("SELECT pg_advisory_xact_lock(:k)", {"k": MIGRATIONS_LOCK_KEY})

    with db.tx() as tx:
        lock(tx)
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            f"(version INTEGER PRIMARY KEY, applied_at {db.dialect.real} NOT NULL)"
        )
    for number, step in enumerate(migrations, start=1):
        with db.tx() as tx:
            lock(tx)
            if tx.scalar("SELECT 1 FROM schema_version WHERE version = :v", {"v": number}):
                continue
            step(tx)
            tx.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (:v, :t)",
                {"v": number, "t": time.time()},
            )
    return len(migrations)
