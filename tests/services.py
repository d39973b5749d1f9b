"""`dlr-reconciler serve` as a real process for end-to-end tests."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def hooked_config(directory: Path, hook: str, api_token: str | None = None) -> Path:
    """A DLR_CONFIG file: one Infobip source `ib` whose webhook takes the header
    `X-Hook: <hook>`, and, if given, an API token with every scope."""
    api = (f'[api]\ntokens = [ {{ token = "{api_token}", scopes = ["read", "write", "admin"] }} ]\n'
           if api_token else "")
    path = directory / "dlr.toml"
    path.write_text(f'{api}[[sources]]\nname = "ib"\nkind = "infobip"\n'
                    f'base_url = "http://127.0.0.1:9"\n[sources.webhook]\n'
                    f'token = {{ header = "X-Hook", value = "{hook}" }}\n')
    return path


def metric_value(exposition: str, series: str) -> float:
    """The sum of the Prometheus samples named `series` (with labels, if it gives them)."""
    total = 0.0
    for line in exposition.splitlines():
        name, _, sample = line.rpartition(" ")
        if name == series or ("{" not in series and name.startswith(series + "{")):
            total += float(sample)
    return total


@dataclass
class Served:
    base: str
    process: subprocess.Popen[bytes]
    log: Path
    output: str = ""  # everything it printed, once it has stopped

    def client(self, **options: object) -> httpx.Client:
        return httpx.Client(base_url=self.base, **options)  # type: ignore[arg-type]

    def printed(self) -> str:
        """What it has printed so far."""
        return self.log.read_text()


@contextmanager
def serving(env: dict[str, str], *args: str, scheme: str = "http",
            verify: ssl.SSLContext | bool = True) -> Iterator[Served]:
    """Start `serve ARGS` with `env` (DLR_PORT set), wait until ready; SIGTERM on the way out.

    Output goes to a file, not a pipe, so a chatty server never blocks on a full pipe.
    """
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "service", "serve", *args], env=env,
                                   stdout=sink, stderr=subprocess.STDOUT)
    served = Served(f"{scheme}://127.0.0.1:{env['DLR_PORT']}", process, log)
    try:
        with httpx.Client(verify=verify) as probe:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "serve did not become ready"
                try:
                    if probe.get(f"{served.base}/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        served.output = log.read_text()
        log.unlink()
