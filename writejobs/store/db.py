"""Engines and sessions for the store, on SQLite (embedded) or PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import Session, sessionmaker

from writejobs.private_files import private_file
from writejobs.settings import Settings


def create_store_engine(settings: Settings) -> Engine:
    """Build the engine; SQLite gets WAL and a busy timeout so processes can share it.

    `hide_parameters`: a statement's error never quotes its parameters, which may
    hold a record (an operation's request and results) or credentials.
    """
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        prepare_embedded_sqlite(settings)
        # As many pooled connections as the API has request threads: a connection made
        # per request (past the pool) costs its PRAGMAs and a file open each time.
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=20,
            max_overflow=30,
            hide_parameters=True,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        hide_parameters=True,
    )
    ping_when_idle(engine, PING_AFTER_IDLE_S)
    return engine


# A pooled connection given back this recently is handed out again without a ping
# (HikariCP skips its check within 500 ms the same way): a busy worker reuses its
# connection every few tens of ms, and the ping was a round trip of every task.
PING_AFTER_IDLE_S = 1.0


def ping_when_idle(engine: Engine, idle_s: float) -> None:
    """The pool's pre-ping, for connections idle in the pool longer than `idle_s`.

    A connection that fails its ping is replaced, and every connection pooled before
    it too (as `pool_pre_ping` does). One used within `idle_s` of a server restart
    fails its first statement instead: the statement's error invalidates the pool,
    and the work it was for is retried as any store error is (the recovery sweeps).
    """

    def fresh(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is not None and time.monotonic() - idle_since < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise InvalidatePoolError() from exc

    event.listen(engine.pool, "connect", fresh)
    event.listen(engine.pool, "checkin", fresh)
    event.listen(engine.pool, "checkout", checkout)


_IDLE_SINCE = "writejobs.idle_since"


def prepare_embedded_sqlite(settings: Settings) -> None:
    """Make the embedded SQLite file (the default store) 0600 in a 0700 data dir.

    Made here, before SQLite opens it: SQLite creates a new file with the
    process's umask, and its `-wal` and `-shm` files with the database file's mode.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.database_url is not None:
        return
    path = Path(settings.sqlalchemy_url.removeprefix("sqlite:///"))
    private_file(path)
    for suffix in ("-wal", "-shm"):
        sibling = path.with_name(path.name + suffix)
        if sibling.exists():
            private_file(sibling)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never block the writer, and a commit costs far less than in
    # the default rollback journal (measured ~2,200 vs ~390 commits/s here).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def pinned_session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session of `sessions` that keeps one pooled connection from start to end.

    A plain session hands its connection back to the pool at each commit and checks
    one out again at the next statement (with the pool's ping after an idle spell, a
    round trip); a worker's task commits two or three times around its provider
    call, so it checks out once here instead of at each transaction. Each commit
    still commits.
    """
    bind = sessions.kw.get("bind")
    if not isinstance(bind, Engine):
        with sessions() as session:
            yield session
        return
    with bind.connect() as connection, sessions(bind=connection) as session:
        yield session


@contextmanager
def statements_alone(session: Session) -> Iterator[None]:
    """Inside, on a pinned PostgreSQL session, each statement is a transaction of its own.

    A transaction costs a `BEGIN` and a `COMMIT` round trip besides its statements
    (psycopg sends `BEGIN` on its own before the first one). Where a transaction is
    a single statement (a read; a compare-and-set that writes its log line in the
    same statement), autocommit runs it in one round trip, exactly as atomic. Only
    for such code: two writes inside would commit apart. The session must be between
    transactions when the block starts; what the block wrote is committed when it
    ends (on SQLite, or an unpinned session, as one transaction).
    """
    connection = session.get_bind()
    if not isinstance(connection, Connection) or connection.dialect.name != "postgresql":
        yield
        session.commit()
        return
    assert not session.in_transaction(), "statements_alone starts between transactions"
    default = connection.default_isolation_level
    connection.execution_options(isolation_level="AUTOCOMMIT")
    try:
        yield
        # Ends the session's transaction, which under autocommit sends nothing (and,
        # unlike a rollback, leaves the objects it read loaded).
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        connection.execution_options(isolation_level=default)
