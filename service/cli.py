"""Command line: serve | worker | migrate | pull SOURCE | replay | simulate | prune | rebuild-billing
| reprice."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import tempfile
from datetime import UTC, datetime
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from uvicorn.supervisors import Multiprocess

from service import db, logs, retention, store
from service.config import Settings, load_settings
from service.errors import BadRequest, ConfigError, DatabaseUnavailable
from service.http_limits import LimitedHttp
from service.schemas import query_time

log = logging.getLogger("service")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlr-reconciler", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="HTTP API and webhooks")
    serve.add_argument("--host", help="listen address (DLR_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (DLR_PORT, default 8080)")
    serve.add_argument("--migrate", action="store_true", help="migrate the database first")
    serve.add_argument("--workers", type=int, help="worker processes (DLR_WORKERS, default 1)")
    serve.add_argument("--no-reconciler", action="store_true",
                       help="serve HTTP only; leave pulling to `worker` processes")
    commands.add_parser("worker", help="run only the reconciler (pulls every source on its interval)")
    commands.add_parser("migrate", help="upgrade the database schema to the newest revision")
    pull = commands.add_parser("pull", help="one reconcile pass of one source, then exit")
    pull.add_argument("source")
    sim = commands.add_parser("simulate", help="fake providers feeding a running service; "
                              "exits 0 once it matches their truth")
    sim.add_argument("--url", default=None, help="the service (default http://DLR_HOST:DLR_PORT)")
    sim.add_argument("--infobip", default="ib", help="the infobip source to fake")
    sim.add_argument("--dicesms", default="dice", help="the dicesms source to fake")
    sim.add_argument("--messages", type=int, default=200)
    sim.add_argument("--api-version", type=int, choices=(3, 1), default=3,
                     help="the shape of the Infobip pushes: v3 (sender, messageCount) or v1")
    sim.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for convergence")
    replay = commands.add_parser("replay", help="decode and merge kept bodies again")
    replay.add_argument("--rejected", action="store_true",
                        help="only bodies not fully accepted (rejected, partial, failed, received)")
    replay.add_argument("--since", help="received at or after (ISO 8601 with an offset)")
    replay.add_argument("--until", help="received before (ISO 8601 with an offset)")
    prune = commands.add_parser("prune", help="drop inbox and history months older than "
                                "DLR_RETENTION_MONTHS (merged messages are kept)")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    commands.add_parser("rebuild-billing", help="make the billing rollup again from the merged "
                        "messages (writes wait meanwhile); it is kept by every merge, so this "
                        "is for when it is in doubt")
    reprice = commands.add_parser("reprice", help="make the rate-card estimates again by the "
                                  "cards as configured now (after a correction, say)")
    reprice.add_argument("--source", action="append", help="only this source (repeatable)")
    reprice.add_argument("--since", help="messages sent at or after (ISO 8601 with an offset)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    logs.configure()
    try:
        settings = load_settings()
        if args.command == "migrate":
            return _migrate(settings)
        if args.command == "pull":
            return _pull(settings, args.source)
        if args.command == "worker":
            return _worker(settings)
        if args.command == "simulate":
            return _simulate(settings, args)
        if args.command == "prune":
            return _prune(settings, args.dry_run)
        if args.command == "rebuild-billing":
            return _rebuild_billing(settings)
        if args.command == "reprice":
            since = query_time("--since", args.since) if args.since else None
            return _reprice(settings, args.source, since)
        if args.command == "replay":
            since = query_time("--since", args.since) if args.since else None
            until = query_time("--until", args.until) if args.until else None
            return _replay(settings, args.rejected, since, until)
        return _serve(settings, args.host, args.port, args.migrate, args.workers,
                      reconciler=not args.no_reconciler)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except BadRequest as exc:
        print(exc.message, file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        print(f"database unavailable: {exc.detail or exc}", file=sys.stderr)
        return 3
    except NotMigrated as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 4
    except AddressInUse as exc:
        print(f"cannot listen: {exc}", file=sys.stderr)
        return 7
    except Exception as exc:
        if refused := db.refusal(exc):  # a wrong role, password or database name
            print(f"database refused the connection: {refused} (check DLR_DATABASE_URL)",
                  file=sys.stderr)
            return 6
        # through the logger, masked like every other line, not as a raw traceback
        log.exception("%s failed", args.command)
        return 1


def _migrate(settings: Settings) -> int:
    url = db.database_url(settings)
    try:
        db.migrate(url)
    except OSError as exc:
        raise DatabaseUnavailable(str(exc), detail=str(exc)) from exc
    _keep_partitions(settings, url)
    print(f"database at revision {db.head_revision()}")
    return 0


def _serve(settings: Settings, host: str | None, port: int | None, migrate: bool,
           workers: int | None, *, reconciler: bool) -> int:
    import uvicorn

    from service.app import create_app

    _check_address(host or settings.host, port or settings.port)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app reloads its configuration on it
    url = _ready_database(settings, migrate)
    _keep_partitions(settings, url)
    # uvicorn re-raises SIGTERM after its graceful shutdown; exiting normally instead lets
    # the embedded database stop with us (atexit).
    signal.signal(signal.SIGTERM, _exit_normally)
    http = functools.partial(LimitedHttp, request_timeout_s=settings.request_timeout_s,
                             max_header_bytes=settings.max_header_bytes,
                             max_connections=settings.max_connections)
    options: dict[str, Any] = {"host": host or settings.host, "port": port or settings.port,
                               # our handlers (JSON, masked) for uvicorn's loggers too
                               "log_config": None, "log_level": "warning",
                               "timeout_graceful_shutdown": settings.shutdown_timeout_s,
                               "server_header": False, "http": http,
                               # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told
                               "proxy_headers": bool(settings.trusted_proxies),
                               "forwarded_allow_ips": list(settings.trusted_proxies)}
    scheme = "http"
    if settings.tls_cert and settings.tls_key:  # for deployments without a TLS ingress
        options |= {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
        scheme = "https"
    workers = workers or settings.workers
    log.info("serving on %s://%s:%s (%d worker%s)", scheme, options["host"], options["port"],
             workers, "" if workers == 1 else "s")
    if workers == 1:
        uvicorn.run(create_app(settings, url, reconciler=reconciler, reload=load_settings),
                    **options)
    else:  # each worker builds its own app, on the database this process chose
        os.environ["DLR_DATABASE_URL"] = url
        os.environ["DLR_RECONCILER"] = "1" if reconciler else "0"
        with tempfile.TemporaryDirectory(prefix="dlr-metrics-") as shared:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared  # /metrics adds up every worker
            config = uvicorn.Config("service.app:create_app_from_env", factory=True,
                                    workers=workers, **options)
            _Supervisor(config, sockets=[config.bind_socket()]).run()  # as uvicorn.run does
    return 0


class _Supervisor(Multiprocess):
    """uvicorn's worker supervisor, but SIGHUP is passed on to the workers, each of which
    reloads its configuration in place. uvicorn's own answer (0.54) is to replace them one
    by one, which closes their idle keep-alive connections and restarts their reconcilers."""

    def handle_hup(self) -> None:
        log.info("SIGHUP passed on to %d workers", len(self.processes))
        for process in self.processes:
            if process.pid is not None:
                # One that has not installed its handler yet dies before serving anything,
                # and is started again, reading the new file.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)


class NotMigrated(Exception):
    pass


class AddressInUse(Exception):
    """serve's address is taken (another process listens there) or not this machine's."""


def _check_address(host: str, port: int) -> None:
    """Fail before starting anything if `host:port` cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise AddressInUse(f"{host}:{port}: {exc.strerror}") from None


def _ready_database(settings: Settings, migrate: bool) -> str:
    """The database URL, migrated if it is ours (embedded) or if asked; else checked."""
    url = db.database_url(settings)
    if migrate or settings.database_url is None:
        db.migrate(url)
    problem = asyncio.run(db.check_migrated(url, settings.db_timeout_s))
    if problem:
        raise NotMigrated(problem)
    return url


def _keep_partitions(settings: Settings, url: str) -> None:
    """This month's partitions and the next ones, made by the processes that keep the
    schema (migrate, serve, worker); the reconciler then keeps them hourly."""
    made = asyncio.run(db.once(url, settings.db_timeout_s, lambda conn: retention.ensure_partitions(
        conn, datetime.now(UTC), settings.retention_months)))
    if made:
        log.info("partitions created", extra={"partitions": made})


def _prune(settings: Settings, dry_run: bool) -> int:
    url = _ready_database(settings, migrate=False)
    pruned = asyncio.run(db.once(url, settings.db_timeout_s, lambda conn: retention.prune(
        conn, datetime.now(UTC), settings.retention_months, dry_run)))
    verb = "would drop" if dry_run else "dropped"
    print(f"keeping {settings.retention_months} months before this one (from {pruned.cutoff:%Y-%m-%d});"
          f" {verb} {len(pruned.dropped)} partitions, {pruned.default_rows} older rows and"
          f" {pruned.runs} reconciler passes, {pruned.sightings} sightings of pulled bodies"
          + "".join(f"\n  {name}" for name in pruned.dropped))
    return 0


def _rebuild_billing(settings: Settings) -> int:
    url = _ready_database(settings, migrate=False)

    async def rebuild() -> int:
        # no statement bound: it reads every message once; no lock bound: it waits its turn
        engine = db.create_engine(url, 3600.0, pool_size=1, statement_timeout_s=None)
        try:
            async with db.transaction(engine) as conn:
                return await store.rebuild_billing(conn)
        finally:
            await engine.dispose()

    rows = asyncio.run(rebuild())
    print(f"billing rollup rebuilt from the merged messages: {rows} rows")
    return 0


def _reprice(settings: Settings, names: list[str] | None, since: datetime | None) -> int:
    from service import ingest

    unknown = [n for n in names or () if n not in settings.sources]
    if unknown:
        print(f"no source named {unknown[0]!r} in the configuration", file=sys.stderr)
        return 2
    sources = [settings.sources[n] for n in (names or settings.sources)]
    url = _ready_database(settings, migrate=False)

    async def run() -> ingest.RepriceResult:
        engine = db.create_engine(url, settings.db_timeout_s, pool_size=2)
        try:
            return await ingest.reprice(engine, sources, since=since)
        finally:
            await engine.dispose()

    result = asyncio.run(run())
    print(f"repriced {result.examined} messages: {result.changed} changed, {result.skipped} "
          "changed meanwhile by a report (left as merged; run again to see them)")
    return 0


def _pull(settings: Settings, name: str) -> int:
    from service import worker
    from service.providers import http

    source = settings.sources.get(name)
    if source is None:
        print(f"no source named {name!r} in the configuration", file=sys.stderr)
        return 2
    url = _ready_database(settings, migrate=False)

    async def once() -> worker.RunResult | None:
        engine = db.create_engine(url, settings.db_timeout_s, pool_size=2)
        try:
            async with http.new_client() as client:
                return await worker.pull(engine, client, source, worker.holder_id(),
                                         spool_dir=settings.data_dir)
        finally:
            await engine.dispose()

    result = asyncio.run(once())
    if result is None:
        print(f"{name}: another process is pulling this source now", file=sys.stderr)
        return 5
    print(f"{name}: {result.pages} pages, {result.reports} reports, {result.changed} changed, "
          f"{result.rejected} rejected" + (f"; error: {result.error}" if result.error else ""))
    return 1 if result.error else 0


def _replay(settings: Settings, only_unaccepted: bool, since: datetime | None,
            until: datetime | None) -> int:
    from service import ingest

    url = _ready_database(settings, migrate=False)

    async def run() -> ingest.ReplayResult:
        engine = db.create_engine(url, settings.db_timeout_s, pool_size=2)
        try:
            return await ingest.replay(engine, settings.sources, only_unaccepted=only_unaccepted,
                                       since=since, until=until)
        finally:
            await engine.dispose()

    result = asyncio.run(run())
    print(f"replayed {result.bodies} bodies: {result.reports} reports, {result.changed} rows "
          f"changed, {result.rejected} rejected, {result.skipped} skipped (unknown source), "
          f"{result.failed} failed (see the log)")
    return 1 if result.failed else 0


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    import httpx

    from service import simulate
    from service.config import DiceSmsSource, InfobipSource
    from service.providers.dicesms.fake import FakeDiceSms
    from service.providers.infobip.fake import FakeInfobip

    ib, dice = settings.sources.get(args.infobip), settings.sources.get(args.dicesms)
    if not isinstance(ib, InfobipSource) or not isinstance(dice, DiceSmsSource):
        print(f"simulate needs an infobip source {args.infobip!r} and a dicesms source "
              f"{args.dicesms!r} in DLR_CONFIG", file=sys.stderr)
        return 2
    token = next((t.token for t in settings.api_tokens if "read" in t.scopes), None)
    if token is None:
        print("simulate needs an API token with the read scope in DLR_CONFIG", file=sys.stderr)
        return 2
    base = args.url or f"http://{settings.host}:{settings.port}"
    scenario = simulate.Scenario(args.messages, ib_source=ib.name, dice_source=dice.name,
                                 api_version=args.api_version)
    with FakeInfobip(ib.api_key or "", port=_port(ib.base_url)) as fake_ib, \
            FakeDiceSms(dice.token or "", page_size=50, port=_port(dice.base_url)) as fake_dice:
        scenario.load(fake_ib, fake_dice)
        print(f"fake Infobip on {fake_ib.url}, fake DiceSMS on {fake_dice.url}; "
              f"{len(scenario.pushes)} pushes ({len(scenario.lost_finals)} final reports lost "
              f"in transit, left for the pull) to {base}")

        async def run() -> list[str]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                await simulate.push(client, scenario, simulate.hook_headers(ib.webhook))
                return await simulate.wait_until_matching(client, scenario, token, args.timeout)

        differences = asyncio.run(run())
    for line in differences[:20]:
        print(line)
    print(f"{len(scenario.truth)} messages, {len(differences)} differences")
    return 1 if differences else 0


def _port(url: str) -> int:
    return urlsplit(url).port or 80


def _worker(settings: Settings) -> int:
    from service import worker
    from service.providers import http

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    url = _ready_database(settings, migrate=False)
    _keep_partitions(settings, url)

    async def forever() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, log.warning, "SIGHUP ignored: the reconciler "
                                "reads DLR_CONFIG when it starts; restart it to change sources")
        # sources are pulled side by side, each holding at most one connection at a time
        engine = db.create_engine(url, settings.db_timeout_s, pool_size=len(settings.sources) + 2)
        try:
            async with http.new_client() as client:
                pulling = asyncio.create_task(worker.run_forever(
                    engine, client, settings.sources, stop, keep_months=settings.retention_months,
                    spool_dir=settings.data_dir))
                await worker.stop_within(pulling, stop, settings.shutdown_timeout_s)
        finally:
            await engine.dispose()

    log.info("reconciler running")
    asyncio.run(forever())
    return 0


def _exit_normally(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
