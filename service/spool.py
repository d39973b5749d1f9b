"""One-time pages on local disk until the inbox holds them.

A page from a consuming endpoint (Infobip's reports are handed out once) exists nowhere
else once fetched. It is written here, synced, before the inbox write is tried; removed
once the inbox has it. A page left behind (the database was down when the process was
stopped, or the process was killed) is taken into the inbox by the next pass of its
source, before anything new is fetched. A crash between the inbox commit and the removal
keeps the page twice, which merging makes harmless.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import msgspec


class Page(msgspec.Struct, frozen=True):
    source: str
    url: str
    content_type: str | None
    body: bytes


def _directory(root: Path, source: str) -> Path:
    return root / "spool" / source


def hold(root: Path, page: Page) -> Path:
    """Write `page` durably (synced, renamed into place); return its file."""
    directory = _directory(root, page.source)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{time.time_ns()}-{uuid.uuid4().hex}.page"
    partial = final.with_suffix(".partial")
    with partial.open("wb") as out:
        out.write(msgspec.msgpack.encode(page))
        out.flush()
        os.fsync(out.fileno())
    partial.rename(final)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the rename itself survives a crash
    finally:
        os.close(descriptor)
    return final


def held(root: Path, source: str) -> list[tuple[Path, Page]]:
    """Pages of `source` still waiting for the inbox, oldest first."""
    directory = _directory(root, source)
    if not directory.is_dir():
        return []
    return [(path, msgspec.msgpack.decode(path.read_bytes(), type=Page))
            for path in sorted(directory.glob("*.page"))]


def release(path: Path) -> None:
    """The inbox has the page: forget it."""
    path.unlink(missing_ok=True)
