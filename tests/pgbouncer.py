"""A real PgBouncer in transaction mode in front of the test server (Debian's `pgbouncer`).

Tests that need it skip when the binary is missing, except in CI, which installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def available() -> None:
    """Skip the calling test without PgBouncer (CI must have it: there it fails instead)."""
    if not Path(BINARY).exists():
        if os.environ.get("CI"):
            pytest.fail("pgbouncer is not installed; .ci/run installs it")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def pgbouncer(server_url: str, pool_size: int = 20) -> Iterator[str]:
    """PgBouncer (transaction pooling) for the server at `server_url`; yields the URL of the
    same database through it, with `?pgbouncer=true`."""
    available()
    server = urlsplit(server_url)
    if not server.hostname or server.hostname.startswith("/"):
        pytest.skip("PgBouncer tests need a PostgreSQL server on TCP")
    port = _free_port()
    work = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    work.chmod(0o777)  # PgBouncer refuses to run as root: it runs as postgres
    ini = work / "pgbouncer.ini"
    ini.write_text(f"""[databases]
* = host={server.hostname} port={server.port or 5432} user={server.username or 'postgres'}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
server_reset_query =
logfile = {work}/pgbouncer.log
""")
    ini.chmod(0o644)
    process = subprocess.Popen([BINARY, "-u", "postgres", str(ini)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, (work / "pgbouncer.log").read_text()
                assert time.monotonic() < deadline, "pgbouncer did not start"
                time.sleep(0.05)
        database = server.path
        yield f"postgresql://{server.username or 'postgres'}@127.0.0.1:{port}{database}?pgbouncer=true"
    finally:
        process.terminate()
        process.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
