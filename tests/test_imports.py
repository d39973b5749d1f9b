"""Every module of the service can be the first one a fresh interpreter imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import service

# Each module is imported by a child forked from an interpreter that has imported the
# third-party libraries and nothing of the service: as fresh as a new process for the
# service's own modules (where an import cycle would be), without paying for the libraries
# once per module.
CHILD = """
import importlib, os, sys, traceback
import litestar, sqlalchemy, msgspec, httpx, phonenumbers, prometheus_client, alembic, uvicorn
assert not any(name == "service" or name.startswith("service.") for name in sys.modules)
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print(" ".join(failed))
"""
ENTRY_POINTS = {"service.__main__"}  # running the command line is what importing it does


def modules() -> list[str]:
    root = Path(service.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name not in ENTRY_POINTS:
            names.append(name)
    return names


def test_every_module_imports_first() -> None:
    names = modules()
    assert "service.config" in names and "service.db" in names
    done = subprocess.run([sys.executable, "-c", CHILD, *names], capture_output=True, text=True,
                          timeout=300, check=True)
    failed = done.stdout.split()
    assert failed == [], f"{' '.join(failed)} cannot be imported first:\n{done.stderr[-4000:]}"
