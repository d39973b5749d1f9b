"""Thin HTTP handlers: read, verify, decode, call one function, return."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec


class ErrorBody(msgspec.Struct):
    """Every error response: a sentence, and structured detail when there is some."""

    error: str
    detail: Any = None


ERRORS = {
    status: ResponseSpec(data_container=ErrorBody, description=description,
                         generate_examples=False)
    for status, description in (
        (400, "The request is malformed; `error` says how (bad input is kept, never merged)"),
        (401, "Missing or wrong credentials"),
        (403, "Credentials without the needed scope, or a source address not allowed"),
        (404, "No such source, message or bulk"),
        (413, "Body larger than DLR_MAX_BODY_BYTES"),
        (503, "The database is unavailable; retry after Retry-After seconds"),
    )
}
