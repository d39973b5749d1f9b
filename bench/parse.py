"""What reading a body costs: the decoder per report, and hostile shapes against a legal body
of the same size. No database, no HTTP: the decoders alone, in this process.

    .venv/bin/python -m bench.parse [--repeat 5]

Prints:
- decode: microseconds of Python per report for a 100-report Infobip JSON push (the
  `bench.ingest` body), and for a 2500-report one; the best of `--repeat` runs of each;
- shapes: seconds (the best of 3), peak traced memory and the outcome (reports, or the
  refusal) for legal bodies (2500 reports: with long texts, near DLR_MAX_BODY_BYTES, and
  with many fields each) and for hostile bodies of about 8 MiB, JSON and XML: many tiny
  values or elements, deep nesting, one element of many attributes, a key given twice, a
  report with a field nested deeper than msgspec goes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
import tracemalloc

from bench.common import report
from service.errors import BadRequest
from service.providers import infobip

MAX_BODY = 8 * 1024 * 1024


def push(count: int, callback: str = "order-42") -> bytes:
    return json.dumps({"results": [report(f"m-{i}", i) | {"callbackData": callback}
                                   for i in range(count)]}).encode()


def per_report(body: bytes, count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        rounds = max(1, 20_000 // count)
        started = time.perf_counter()
        for _ in range(rounds):
            infobip.decode_reports("ib", body)
        best = min(best, (time.perf_counter() - started) / rounds / count)
    return best * 1e6


def xml_report(i: int, callback: str) -> str:
    return (f"<result><messageId>m-{i}</messageId><to>41793026727</to><status><groupId>3"
            "</groupId><groupName>DELIVERED</groupName><id>5</id><name>DELIVERED_TO_HANDSET"
            "</name></status><sentAt>2026-11-01T10:00:00.000+0000</sentAt><callbackData>"
            f"{callback}</callbackData></result>")


def shapes() -> dict[str, tuple[bytes, str | None]]:
    """Bodies of about MAX_BODY bytes each, with the content type they are pushed with."""
    xml = "application/xml"
    legal_json = push(2500, "c" * 2900)
    legal_xml = ("<reportResponse><results>" + "".join(
        xml_report(i, "c" * 2900) for i in range(2500)) + "</results></reportResponse>").encode()
    depth = (MAX_BODY - 40) // 7
    attributes = b" ".join(b'a%d=""' % i for i in range(900_000))[:MAX_BODY - 100]
    tiny = b",".join([b"[]"] * ((MAX_BODY - 200) // 3))
    deep = b"[" * ((MAX_BODY - 1000) // 2) + b"]" * ((MAX_BODY - 1000) // 2)
    one = json.dumps(report("m-0", 0))
    dense = {f"f{k}": k for k in range(40)}  # unknown fields: counted, not stored
    dense_json = json.dumps({"results": [report(f"m-{i}", i) | dense for i in range(2500)]})
    dense_xml = "".join(f"<f{k}>{k}</f{k}>" for k in range(40))
    return {
        "JSON, legal: 2500 reports": (legal_json, None),
        "JSON, legal: 2500 reports of 60 values": (dense_json.encode(), None),
        "JSON, 2.8 M tiny values in one report": (
            b'{"results":[{"messageId":"m","status":{"groupId":3},"x":[' + tiny + b"]}]}", None),
        "JSON, 4 M zeros as reports": (
            b'{"results":[' + b",".join([b"0"] * ((MAX_BODY - 20) // 2)) + b"]}", None),
        "JSON, one report nested 4 M deep": (
            b'{"results":[' + one.encode()[:-1] + b',"x":' + deep + b"}]}", None),
        "JSON, 2500 reports, one with a field 60 k deep": (json.dumps({"results": [
            report(f"m-{i}", i) | {"callbackData": "c" * 2900} for i in range(2500)]}).replace(
            '"smsCount": 1', '"smsCount": 1, "x": ' + "[" * 60_000 + "]" * 60_000, 1).encode(),
            None),
        "JSON, a report 3000 deep, 4 M escaped quotes": (
            b'{"results":[' + b"[" * 3000 + b"]" * 3000 + b',"' + b'\\"' * ((MAX_BODY - 6100) // 2)
            + b'"]}', None),
        "JSON, a key given twice": (legal_json[:-1] + b', "results": []}', None),
        "XML, legal: 2500 reports": (legal_xml, xml),
        "XML, legal: 2500 reports of 50 elements": (("<reportResponse><results>" + "".join(
            xml_report(i, "c").replace("<to>", dense_xml + "<to>") for i in range(2500))
            + "</results></reportResponse>").encode(), xml),
        "XML, 2 M empty elements": (
            b"<reportResponse>" + b"<a/>" * ((MAX_BODY - 40) // 4) + b"</reportResponse>", xml),
        "XML, 1.2 M nested elements": (
            b"<results>" + b"<a>" * depth + b"</a>" * depth + b"</results>", xml),
        "XML, one element of 840 k attributes": (
            b"<reportResponse><a " + attributes.rpartition(b" ")[0] + b"/></reportResponse>", xml),
    }


def outcome(body: bytes, content_type: str | None) -> tuple[float, int, str]:
    """Seconds (the best of a few runs), peak traced memory, and what the decoder said."""
    seconds = min(_timed(body, content_type) for _ in range(3))
    tracemalloc.start()
    try:
        reports, rejections = infobip.decode_reports("ib", body, content_type)
        said = f"{len(reports)} reports, {len(rejections)} rejected"
    except BadRequest as exc:
        said = f"{exc.status_code}: {exc.message[:60]}"
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak, said


def _timed(body: bytes, content_type: str | None) -> float:
    started = time.perf_counter()
    with contextlib.suppress(BadRequest):
        infobip.decode_reports("ib", body, content_type)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # unknown fields are logged once per name
    for count in (100, 2500):
        print(f"decode, {count}-report Infobip push: "
              f"{per_report(push(count), count, args.repeat):.1f} us a report")
    print("\nshape                                     MiB  seconds  peak MiB  outcome")
    for name, (body, content_type) in shapes().items():
        seconds, peak, said = outcome(body, content_type)
        print(f"{name:41} {len(body) / 2**20:4.1f} {seconds:8.3f} {peak / 2**20:9.1f}  {said}")


if __name__ == "__main__":
    main()
