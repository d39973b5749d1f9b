"""Command line: serve | worker | migrate | pull SOURCE | replay | simulate | prune | rebuild-billing
| reprice."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import functools
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from types import FrameType
from typing import Any, NamedTuple, NoReturn
from urllib.parse import urlsplit

from uvicorn.supervisors import Multiprocess

from service import db, logs, retention, store
from service.config import Settings, load_settings, no_source
from service.errors import BadRequest, ConfigError, DatabaseUnavailable
from service.http_limits import LimitedHttp, trusted_networks
from service.schemas import query_time

log = logging.getLogger("service")


class Exit(enum.IntEnum):
    """The exit codes, one per kind of outcome, the same for every command."""

    OK = 0
    FAILED = 1  # anything else: logged with its traceback (a bug, or a failed pass or body)
    CONFIG = 2  # a bad file, variable or argument
    DATABASE_UNAVAILABLE = 3
    NOT_MIGRATED = 4
    BUSY = 5  # pull: another process is pulling that source now
    DATABASE_REFUSED = 6  # the URL's role, password or database name
    ADDRESS_IN_USE = 7
    DIFFERENCES = 8  # simulate: the service does not match the fakes' truth
    UNREACHABLE = 9  # simulate: the service cannot be reached, or answered with an error
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


_MEANING = {
    Exit.OK: "done",
    Exit.FAILED: "failed otherwise (the error is logged)",
    Exit.CONFIG: "configuration error: a bad DLR_CONFIG file, DLR_* variable or argument",
    Exit.DATABASE_UNAVAILABLE: "the database is unavailable",
    Exit.NOT_MIGRATED: "the database schema is not the current one (run migrate)",
    Exit.BUSY: "another process is pulling this source now",
    Exit.DATABASE_REFUSED: "the database refused DLR_DATABASE_URL's role, password or "
                           "database name",
    Exit.ADDRESS_IN_USE: "the address to listen on is in use (or not this machine's)",
    Exit.DIFFERENCES: "differences found: the service does not match the fakes' truth",
    Exit.UNREACHABLE: "cannot reach the service (or it answered a request with an error)",
}
_ON_DATABASE = (Exit.DATABASE_UNAVAILABLE, Exit.NOT_MIGRATED, Exit.DATABASE_REFUSED)


class Command(NamedTuple):
    summary: str  # a line of the command list
    description: str
    codes: tuple[Exit, ...]  # what it can end with besides 0, 2 and 130
    failed: str = _MEANING[Exit.FAILED]  # what 1 means for it


COMMANDS = {
    "serve": Command(
        "HTTP API, webhooks and the reconciler",
        "Serve the HTTP API and the webhooks, and run the reconciler (unless --no-reconciler), "
        "until SIGTERM or Ctrl-C.", (Exit.FAILED, *_ON_DATABASE, Exit.ADDRESS_IN_USE)),
    "worker": Command(
        "the reconciler alone, with probes and metrics",
        "Run the reconciler alone: pull every source with credentials on its pull_interval_s, "
        "and answer /health/live, /health/ready and /metrics on DLR_HOST:DLR_WORKER_PORT "
        "(default 9090; 0: none), until SIGTERM or Ctrl-C.",
        (Exit.FAILED, *_ON_DATABASE, Exit.ADDRESS_IN_USE)),
    "migrate": Command(
        "upgrade the database schema",
        "Upgrade the database schema to the newest revision and make the coming months' "
        "partitions; safe from several replicas at once (they queue on an advisory lock).",
        (Exit.FAILED, Exit.DATABASE_UNAVAILABLE, Exit.DATABASE_REFUSED)),
    "pull": Command(
        "one reconcile pass over one source",
        "One reconcile pass over one source, then exit.",
        (Exit.FAILED, *_ON_DATABASE, Exit.BUSY),
        "the pass recorded an error, or failed otherwise (logged)"),
    "replay": Command(
        "decode and merge kept bodies again",
        "Decode and merge kept bodies again (after a decoder fix, say); repeating it changes "
        "nothing. A body it cannot merge is logged and counted, and it goes on. Counts and a "
        "rate on stderr while it runs, when stderr is a terminal.",
        (Exit.FAILED, *_ON_DATABASE),
        "a body could not be merged (logged), or the replay failed"),
    "simulate": Command(
        "fake providers feeding a running service",
        "Run fake providers (Infobip and DiceSMS, or --provider's) feeding a running service: "
        "each fake listens on the port of its source's base_url, and refuses to start when "
        "another process listens there. Once the service answers /health/ready, push lossy "
        "reports to it and wait until it matches the fakes' truth; print each difference "
        "(source/id: field is X, expected Y). Counts and a rate on stderr while it runs, "
        "when stderr is a terminal.",
        (Exit.FAILED, Exit.ADDRESS_IN_USE, Exit.DIFFERENCES, Exit.UNREACHABLE)),
    "prune": Command(
        "drop raw bodies and history past the retention",
        "Drop inbox and history months, and reconciler passes, older than "
        "DLR_RETENTION_MONTHS (merged messages are kept). Counts and a rate on stderr while "
        "it runs, when stderr is a terminal.", (Exit.FAILED, *_ON_DATABASE)),
    "rebuild-billing": Command(
        "make the billing rollup again from the messages",
        "Make the billing rollup again from the merged messages (writes wait meanwhile). "
        "Every merge keeps it, so this is for when it is in doubt.",
        (Exit.FAILED, *_ON_DATABASE)),
    "reprice": Command(
        "make the rate-card estimates again",
        "Make the rate-card estimates (prices, and parts counted from the text) again by the "
        "cards as configured now, after a correction say: only messages without a reported "
        "price or part count; a row whose estimate stands is not written.",
        (Exit.FAILED, *_ON_DATABASE)),
}


def _exit_codes(codes: tuple[Exit, ...], failed: str = _MEANING[Exit.FAILED]) -> str:
    shown = sorted({Exit.OK, Exit.CONFIG, *codes, Exit.INTERRUPTED})
    meaning = _MEANING | {Exit.FAILED: failed, Exit.INTERRUPTED: "interrupted (Ctrl-C)"}
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {meaning[code]}" for code in shown)


def version() -> str:
    try:
        return metadata.version("dlr-reconciler")
    except metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line naming it, and exit 2, as every other
    configuration error is (argparse's own is the usage, then the error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(Exit.CONFIG, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _whole(low: int, high: int) -> Callable[[str], int]:
    """An argument's type: a whole number from `low` to `high`."""
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    return whole


def _seconds(text: str) -> float:
    """An argument's type: a number of seconds, more than 0 and at most a day."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86400:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text} is outside 0..86400 seconds")
    return value


def _http_url(text: str) -> str:
    """An argument's type: an http(s) URL with a host."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL with a host, "
                                         "e.g. http://127.0.0.1:8080")
    return text.rstrip("/")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dlr-reconciler", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SMS delivery reports, pushed and pulled, merged into one exact state.",
        epilog=_exit_codes(tuple(Exit)[1:-1]) + "\n\n`dlr-reconciler COMMAND --help` says which "
        "a command can end with.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str) -> argparse.ArgumentParser:
        about = COMMANDS[name]
        return commands.add_parser(name, help=about.summary,
                                   description=textwrap.fill(about.description, 79,
                                                               break_on_hyphens=False),
                                   epilog=_exit_codes(about.codes, about.failed),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    serve = command("serve")
    serve.add_argument("--host", help="listen address (DLR_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=_whole(1, 65535),
                       help="listen port (DLR_PORT, default 8080)")
    serve.add_argument("--migrate", action="store_true", help="migrate the database first")
    serve.add_argument("--workers", type=_whole(1, 64),
                       help="worker processes, 1 to 64 (DLR_WORKERS, default 1)")
    serve.add_argument("--no-reconciler", action="store_true",
                       help="serve HTTP only; leave pulling to `worker` processes")
    command("worker")
    command("migrate")
    pull = command("pull")
    pull.add_argument("source", help="a source name from DLR_CONFIG")
    sim = command("simulate")
    sim.add_argument("--url", type=_http_url, default=None,
                     help="the running service to feed (default http://DLR_HOST:DLR_PORT)")
    sim.add_argument("--provider", choices=("infobip", "twilio", "vonage", "sinch"),
                     default="infobip", help="the kind to fake: infobip (with dicesms, the "
                     "default), twilio, vonage or sinch")
    sim.add_argument("--source", help="with --provider: the source to fake (default: the "
                     "first of that kind in DLR_CONFIG)")
    sim.add_argument("--infobip", default="ib", metavar="SOURCE",
                     help="the infobip source to fake (default ib)")
    sim.add_argument("--dicesms", default="dice", metavar="SOURCE",
                     help="the dicesms source to fake beside it (default dice)")
    sim.add_argument("--messages", type=_whole(1, 1_000_000), default=300, metavar="N",
                     help="messages to invent, N in all (default 300); with infobip, two "
                     "thirds are Infobip's and a third DiceSMS's")
    sim.add_argument("--seed", type=_whole(0, 999_999), default=None,
                     help="the scenario's seed, 0 to 999999 (default: a new one each run, "
                     "printed, so that a run can be repeated)")
    sim.add_argument("--api-version", type=int, choices=(3, 1), default=3,
                     help="the shape of the Infobip pushes: v3 (sender, messageCount, the "
                     "default) or v1")
    sim.add_argument("--timeout", type=_seconds, default=300.0, metavar="S",
                     help="seconds to wait for the service to match the truth (default 300)")
    replay = command("replay")
    replay.add_argument("--rejected", action="store_true",
                        help="only bodies not fully accepted (rejected, partial, failed, received)")
    replay.add_argument("--source", help="only the bodies of this source (a name from DLR_CONFIG)")
    replay.add_argument("--since", help="received at or after (ISO 8601 with an offset)")
    replay.add_argument("--until", help="received before (ISO 8601 with an offset)")
    prune = command("prune")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    command("rebuild-billing")
    reprice = command("reprice")
    reprice.add_argument("--source", action="append", help="only this source (repeatable)")
    reprice.add_argument("--since", help="messages sent at or after (ISO 8601 with an offset)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    try:
        logs.configure()
        return _run(args)
    except ConfigError as exc:
        return _fail(Exit.CONFIG, f"config error: {exc}")
    except BadRequest as exc:
        return _fail(Exit.CONFIG, exc.message)
    except DatabaseUnavailable as exc:
        if pooler := db.pooler_refusal(exc):  # a PgBouncer URL without ?pgbouncer=true
            return _fail(Exit.CONFIG, f"config error: {pooler}")
        hint = db.password_hint(os.environ.get("DLR_DATABASE_URL")) if db.unresolved(exc) else ""
        return _fail(Exit.DATABASE_UNAVAILABLE, f"database unavailable: {exc.detail or exc}{hint}")
    except NotMigrated as exc:
        return _fail(Exit.NOT_MIGRATED, f"cannot start: {exc}")
    except AddressInUse as exc:
        return _fail(Exit.ADDRESS_IN_USE, f"cannot listen: {exc}")
    except Unreachable as exc:
        return _fail(Exit.UNREACHABLE, str(exc))
    except KeyboardInterrupt:
        return _fail(Exit.INTERRUPTED, "interrupted")
    except Exception as exc:
        if pooler := db.pooler_refusal(exc):
            return _fail(Exit.CONFIG, f"config error: {pooler}")
        if refused := db.refusal(exc):  # a wrong role, password or database name
            return _fail(Exit.DATABASE_REFUSED, f"database refused the connection: {refused} "
                         "(check DLR_DATABASE_URL)")
        # through the logger, masked like every other line, not as a raw traceback
        log.exception("%s failed", args.command)
        return Exit.FAILED


def _fail(code: Exit, line: str) -> int:
    """One line on stderr (starting a new line if progress was being shown), and the code."""
    print(f"{Progress.pending_newline()}{line}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
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
        return _reprice(settings, args.source,
                        query_time("--since", args.since) if args.since else None)
    if args.command == "replay":
        since = query_time("--since", args.since) if args.since else None
        until = query_time("--until", args.until) if args.until else None
        return _replay(settings, args.rejected, since, until, args.source)
    return _serve(settings, args.host, args.port, args.migrate, args.workers,
                  reconciler=not args.no_reconciler)


class Progress:
    """Counts and a rate on one line of stderr, redrawn at most every `every_s` seconds,
    only when stderr is a terminal: a log file or a pipe gets the final summary alone."""

    _open = False  # a progress line is on screen without its newline yet

    def __init__(self, label: str, rate_of: str, every_s: float = 0.5) -> None:
        self.label, self.rate_of, self.every_s = label, rate_of, every_s
        self.on = sys.stderr.isatty()
        self.started = time.monotonic()
        self.shown = -math.inf  # the first counts show at once

    def __call__(self, **counts: int) -> None:
        now = time.monotonic()
        if not self.on or now - self.shown < self.every_s:
            return
        self.shown = now
        rate = counts[self.rate_of] / max(now - self.started, 1e-6)
        shown = ", ".join(f"{value:,} {name}" for name, value in counts.items())
        sys.stderr.write(f"\r\x1b[K{self.label}: {shown} ({rate:,.0f} {self.rate_of}/s)")
        sys.stderr.flush()
        Progress._open = True

    @staticmethod
    def pending_newline() -> str:
        """The newline that ends a progress line still on screen, once."""
        if not Progress._open:
            return ""
        Progress._open = False
        return "\n"

    def done(self) -> None:
        """End the progress line, so what follows starts on a line of its own."""
        sys.stderr.write(Progress.pending_newline())


def _migrate(settings: Settings) -> int:
    url = db.database_url(settings.database_url, settings.data_dir)
    db.migrate(url)
    _keep_partitions(settings, url)
    print(f"database at revision {db.head_revision()}")
    return Exit.OK


def _serve(settings: Settings, host: str | None, port: int | None, migrate: bool,
           workers: int | None, *, reconciler: bool) -> int:
    # Bound here, before anything starts, and handed to uvicorn: a taken address is said
    # at once (exit 7), and nobody can take it between a check and uvicorn's own bind.
    with _listen(host or settings.host, port or settings.port) as listener:
        return _serve_on(listener, settings, host, port, migrate, workers, reconciler=reconciler)


def _serve_on(listener: socket.socket, settings: Settings, host: str | None, port: int | None,
              migrate: bool, workers: int | None, *, reconciler: bool) -> int:
    import uvicorn

    from service.app import create_app

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app reloads its configuration on it
    url = _ready_database(settings, migrate)
    _keep_partitions(settings, url)
    # uvicorn re-raises SIGTERM after its graceful shutdown; exiting normally instead lets
    # the embedded database stop with us (atexit).
    signal.signal(signal.SIGTERM, _exit_normally)
    http = _limited_http(settings)
    options: dict[str, Any] = {"host": host or settings.host, "port": port or settings.port,
                               # our handlers (JSON, masked) for uvicorn's loggers too
                               "log_config": None, "log_level": "warning",
                               "timeout_graceful_shutdown": settings.shutdown_timeout_s,
                               "server_header": False, "http": http,
                               # no WebSocket route: an upgrade is a plain request, and its
                               # connection stays ours (its slot is given back on close)
                               "ws": "none",
                               # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told
                               "proxy_headers": bool(settings.trusted_proxies),
                               "forwarded_allow_ips": list(settings.trusted_proxies)}
    scheme = "http"
    if settings.tls_cert and settings.tls_key:  # for deployments without a TLS ingress
        options |= {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
        scheme = "https"
    workers = workers or settings.workers
    _warn_without_config(settings)
    log.info("serving on %s://%s:%s (%d worker%s)", scheme, options["host"], options["port"],
             workers, "" if workers == 1 else "s")
    if workers == 1:
        server = uvicorn.Server(uvicorn.Config(
            create_app(settings, url, reconciler=reconciler, reload=load_settings), **options))
        logs.queued()  # serving: logs are written from a thread of their own
        server.run(sockets=[listener])
        if not server.started:  # the app did not start (logged)
            return Exit.FAILED
    else:  # each worker builds its own app, on the database this process chose
        os.environ["DLR_DATABASE_URL"] = url
        os.environ["DLR_RECONCILER"] = "1" if reconciler else "0"
        with tempfile.TemporaryDirectory(prefix="dlr-metrics-") as shared:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared  # /metrics adds up every worker
            config = uvicorn.Config("service.app:create_app_from_env", factory=True,
                                    workers=workers, **options)
            _Supervisor(config, sockets=[listener]).run()  # as uvicorn.run does
    return Exit.OK


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


class Unreachable(Exception):
    """simulate: the service cannot be reached, or answered a request with an error."""


class AddressInUse(Exception):
    """The address to listen on is taken (another process listens there) or not this
    machine's."""


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on `host:port`, bound as uvicorn binds (inheritable, for
    `--workers`); AddressInUse if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(2048)  # uvicorn's backlog; a socket bound but not listening elsewhere
    except OSError as exc:
        listener.close()
        raise AddressInUse(f"{host}:{port}: {exc.strerror}") from None
    listener.set_inheritable(True)
    return listener


def _ready_database(settings: Settings, migrate: bool) -> str:
    """The database URL, migrated if it is ours (embedded) or if asked; else checked."""
    url = db.database_url(settings.database_url, settings.data_dir)
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
    progress = Progress("prune", "dropped")
    pruned = asyncio.run(db.once(url, settings.db_timeout_s, lambda conn: retention.prune(
        conn, datetime.now(UTC), settings.retention_months, dry_run,
        progress=lambda done, total: progress(dropped=done, partitions=total))))
    progress.done()
    verb = "would drop" if dry_run else "dropped"
    print(f"keeping {settings.retention_months} months before this one (from {pruned.cutoff:%Y-%m-%d});"
          f" {verb} {len(pruned.dropped)} partitions, {pruned.default_rows} older rows and"
          f" {pruned.runs} reconciler passes, {pruned.sightings} sightings of pulled bodies"
          + "".join(f"\n  {name}" for name in pruned.dropped))
    return Exit.OK


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
    return Exit.OK


def _reprice(settings: Settings, names: list[str] | None, since: datetime | None) -> int:
    from service import ingest

    unknown = [n for n in names or () if n not in settings.sources]
    if unknown:
        raise ConfigError(f"--source: {no_source(settings, unknown[0])}")
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
    return Exit.OK


def _pull(settings: Settings, name: str) -> int:
    from service import worker
    from service.providers import http

    source = settings.sources.get(name)
    if source is None:
        raise ConfigError(no_source(settings, name))
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
        return Exit.BUSY
    print(f"{name}: {result.pages} pages, {result.reports} reports, {result.changed} changed, "
          f"{result.rejected} rejected" + (f"; error: {result.error}" if result.error else ""))
    return Exit.FAILED if result.error else Exit.OK


def _replay(settings: Settings, only_unaccepted: bool, since: datetime | None,
            until: datetime | None, source: str | None) -> int:
    from service import ingest

    if source is not None and source not in settings.sources:
        raise ConfigError(f"--source: {no_source(settings, source)}")
    url = _ready_database(settings, migrate=False)
    progress = Progress("replay", "reports")

    async def run() -> ingest.ReplayResult:
        engine = db.create_engine(url, settings.db_timeout_s, pool_size=2)
        try:
            return await ingest.replay(
                engine, settings.sources, only_unaccepted=only_unaccepted, since=since,
                until=until, source=source, progress=lambda done: progress(
                    bodies=done.bodies, reports=done.reports, changed=done.changed))
        finally:
            await engine.dispose()

    result = asyncio.run(run())
    progress.done()
    print(f"replayed {result.bodies} bodies: {result.reports} reports, {result.changed} rows "
          f"changed, {result.rejected} rejected, {result.skipped} skipped (unknown source), "
          f"{result.failed} failed (see the log)")
    return Exit.FAILED if result.failed else Exit.OK


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    import httpx

    from service import simulate
    from service.providers.infobip.fake import FakeInfobip

    seed = simulate.new_seed() if args.seed is None else args.seed
    run = simulate.plan(settings, args.provider, messages=args.messages, seed=seed,
                        source=args.source, infobip=args.infobip, dicesms=args.dicesms,
                        api_version=args.api_version)
    scenario = run.scenario
    base = args.url or f"http://{settings.host}:{settings.port}"
    with contextlib.ExitStack() as stack:
        # each fake on its source's port, taken by this process alone (else exit 7)
        fakes = [stack.enter_context(_fake(make, port)) for _, make, port in run.fakes]
        scenario.load(*fakes)
        pushing = Progress("simulate", "pushes")
        waiting = Progress("simulate", "matching")

        async def converge() -> list[str]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                await simulate.ready(client)  # said before anything is announced or sent
                print(", ".join(f"fake {name} on {fake.url}" for (name, _, _), fake
                                in zip(run.fakes, fakes, strict=True))
                      + f"; seed {seed}; {len(scenario.pushes)} pushes ({scenario.lost}) to "
                      f"{base}", flush=True)
                await simulate.push(client, scenario, run.headers_for,
                                    progress=lambda sent: pushing(pushes=sent))
                pushing.done()
                return await simulate.wait_until_matching(
                    client, scenario, run.token, args.timeout,
                    progress=lambda matching: waiting(matching=matching,
                                                      messages=len(scenario.truth)))

        try:
            differences = asyncio.run(converge())
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the service at {base}: "
                              f"{exc or type(exc).__name__}") from None
        except httpx.HTTPStatusError as exc:
            request = exc.request
            raise Unreachable(f"the service at {base} answered {request.method} "
                              f"{request.url.path} with {exc.response.status_code}: "
                              f"{exc.response.text[:200]}") from None
        waiting.done()
    for line in simulate.shown(differences):
        print(line)
    infobip = next((fake for fake in fakes if isinstance(fake, FakeInfobip)), None)
    if isinstance(scenario, simulate.Scenario) and infobip is not None \
            and (taken := scenario.taken_elsewhere(infobip, differences)):
        print(f"{taken} one-time reports that the fake Infobip on {infobip.url} handed out are "
              f"not in the service at {base}: another service pulls {infobip.url} too (each "
              "logs `pulling <source> (infobip) from <url>` as it starts); stop it, or give "
              "this setup's sources other ports")
    print(f"{len(scenario.truth)} messages, {len(differences)} differences (seed {seed})")
    return Exit.DIFFERENCES if differences else Exit.OK


def _fake(make: Callable[..., Any], port: int) -> Any:
    """A fake provider on 127.0.0.1:`port`; AddressInUse if something else listens there."""
    try:
        return make(port=port)
    except OSError as exc:
        raise AddressInUse(f"a fake provider on 127.0.0.1:{port}: {exc.strerror}; is another "
                           "simulate running? (or give this setup's sources other ports)") from None


def _worker(settings: Settings) -> int:

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # probes and metrics (none on port 0)
    listener = _listen(settings.host, settings.worker_port) if settings.worker_port else None
    with listener or contextlib.nullcontext():
        return _work(settings, listener)


def _work(settings: Settings, listener: socket.socket | None) -> int:
    from service import worker
    from service.providers import http

    url = _ready_database(settings, migrate=False)
    _keep_partitions(settings, url)

    async def forever() -> None:
        import uvicorn

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, log.warning, "SIGHUP ignored: the reconciler "
                                "reads DLR_CONFIG when it starts; restart it to change sources")
        # said once SIGTERM stops it cleanly: whoever waits for this line may send it
        log.info("reconciler running" + (f"; probes and metrics on http://{settings.host}:"
                                         f"{settings.worker_port}" if listener else ""))
        # sources are pulled side by side, each holding at most one connection at a time,
        # and a probe takes one more
        engine = db.create_engine(url, settings.db_timeout_s, pool_size=len(settings.sources) + 3)
        ops = worker.OpsServer(uvicorn.Config(
            worker.ops_app(settings, engine), log_config=None, log_level="warning",
            server_header=False, timeout_graceful_shutdown=5, http=_limited_http(settings),
            ws="none"))
        serving = asyncio.create_task(ops.serve(sockets=[listener]) if listener else stop.wait())
        try:
            async with http.new_client() as client:
                pulling = asyncio.create_task(worker.run_forever(
                    engine, client, settings.sources, stop, keep_months=settings.retention_months,
                    spool_dir=settings.data_dir))
                await worker.stop_within(pulling, stop, settings.shutdown_timeout_s)
        finally:
            ops.should_exit = True  # metrics stay up until the reconciler has stopped
            stop.set()
            await serving
            await engine.dispose()

    _warn_without_config(settings)
    logs.queued()  # running: logs are written from a thread of their own
    asyncio.run(forever())
    return Exit.OK


def _warn_without_config(settings: Settings) -> None:
    """Said as `serve` and `worker` start: without a file they take no report and pull none."""
    if settings.config is None:
        log.warning("no DLR_CONFIG: no sources and no API tokens")


def _limited_http(settings: Settings) -> Any:
    """uvicorn's HTTP protocol with the service's limits (service.http_limits)."""
    return functools.partial(
        LimitedHttp, request_timeout_s=settings.request_timeout_s,
        first_byte_timeout_s=settings.first_byte_timeout_s,
        max_header_bytes=settings.max_header_bytes, max_connections=settings.max_connections,
        max_per_client=settings.max_connections_per_client,
        trusted=trusted_networks(settings.trusted_proxies))


def _exit_normally(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
