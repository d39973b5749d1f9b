"""What an unauthenticated sender can cost the event loop: the worst body each signed kind
takes, checked as the webhook checks it, against a legal body of the same size.

    .venv/bin/python -m bench.unverified

Prints, per kind, the milliseconds the event loop spends checking its largest body (its
kind's limit): a legal one (signed), and a hostile one (the worst shape that fits, with a
forged signature), each the median of several runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from urllib.parse import urlencode

from service.api.webhooks import Gate, sign, sinch_sign
from service.errors import ServiceError
from service.providers import sinch, twilio, vonage
from service.providers.base import (
    SinchSignatureAuth,
    StandardWebhooksAuth,
    TwilioSignatureAuth,
    VonageSignatureAuth,
    WebhookConfig,
)

SW_SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
TOKEN, SECRET = "t" * 32, "v" * 32
PUBLIC = "https://hooks.example.com/webhooks/tw"


def checked(gate: Gate, headers: dict[str, str], body: bytes, query: str = "") -> None:
    """The webhook's own path: headers, then the body fed as it arrives, then verified."""
    headers = {k.lower(): v for k, v in headers.items()}  # as Litestar's headers read
    try:
        gate.check_headers(headers, None)
        check = gate.body_check(headers, query)
        if check is not None:
            for start in range(0, len(body), 65536):
                check.update(body[start:start + 65536])
            check.verify(body)
    except ServiceError:
        pass


def median_ms(run: Callable[[], None], times: int = 7) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def standard_webhooks() -> tuple[float, float]:
    gate = Gate("sw", WebhookConfig(standard_webhooks=StandardWebhooksAuth([SW_SECRET])))
    body = b"{" * (8 << 20)
    stamp = int(time.time())
    good = {"webhook-id": "m", "webhook-timestamp": str(stamp),
            "webhook-signature": sign(SW_SECRET, "m", stamp, body)}
    bad = good | {"webhook-signature": "v1,AAAA"}
    return (median_ms(lambda: checked(gate, good, body)),
            median_ms(lambda: checked(gate, bad, body)))


def twilio_kind() -> tuple[float, float]:
    auth = TwilioSignatureAuth([TOKEN], PUBLIC)
    gate = Gate("tw", WebhookConfig(twilio_signature=auth))
    # the most parameters that fit the kind's limit: many tiny ones
    params = {f"p{i}": "x" for i in range(twilio.MAX_CALLBACK_BYTES // 8)}
    body = urlencode(params).encode()[:twilio.MAX_CALLBACK_BYTES]
    legal = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "delivered",
             "Body": "x" * (twilio.MAX_CALLBACK_BYTES - 200)}
    legal_body = urlencode(legal).encode()
    good = {"X-Twilio-Signature": twilio.sign(TOKEN, PUBLIC, legal),
            "Content-Type": "application/x-www-form-urlencoded"}
    bad = good | {"X-Twilio-Signature": "junk"}
    return (median_ms(lambda: checked(gate, good, legal_body)),
            median_ms(lambda: checked(gate, bad, body)))


def vonage_kind() -> tuple[float, float]:
    auth = VonageSignatureAuth(SECRET)
    gate = Gate("vg", WebhookConfig(vonage_signature=auth))
    hostile = (b'{"a":' + b"[" * (vonage.MAX_RECEIPT_BYTES // 2 - 10)
               + b"]" * (vonage.MAX_RECEIPT_BYTES // 2 - 10) + b"}")
    params = {"messageId": "0B00000123", "status": "delivered", "msisdn": "447700900000",
              "timestamp": str(int(time.time())), "nonce": "n", "client-ref": "x" * 100}
    params["sig"] = vonage.sign(SECRET, "sha256", params)
    legal = json.dumps(params).encode()
    headers = {"Content-Type": "application/json"}
    return (median_ms(lambda: checked(gate, headers, legal)),
            median_ms(lambda: checked(gate, headers, hostile)))


def sinch_kind() -> tuple[float, float]:
    auth = SinchSignatureAuth(["sinch-callback-secret-0123456789"])
    gate = Gate("sn", WebhookConfig(sinch_signature=auth))
    body = b"[" * sinch.MAX_CALLBACK_BYTES
    stamp = str(int(time.time()))
    good = {"x-sinch-webhook-signature": sinch_sign(auth.secrets[0], "n", stamp, body),
            "x-sinch-webhook-signature-nonce": "n",
            "x-sinch-webhook-signature-timestamp": stamp}
    bad = good | {"x-sinch-webhook-signature": "AAAA"}
    return (median_ms(lambda: checked(gate, good, body)),
            median_ms(lambda: checked(gate, bad, body)))


def main() -> None:
    for name, measure, limit in (
            ("standard_webhooks (Infobip)", standard_webhooks, 8 << 20),
            ("twilio_signature", twilio_kind, twilio.MAX_CALLBACK_BYTES),
            ("vonage_signature", vonage_kind, vonage.MAX_RECEIPT_BYTES),
            ("sinch_signature", sinch_kind, sinch.MAX_CALLBACK_BYTES)):
        legal, hostile = measure()
        print(f"{name:28} limit {limit:>9,} bytes  legal {legal:7.2f} ms  "
              f"hostile {hostile:7.2f} ms  ratio {hostile / max(legal, 0.001):5.2f}")
    print(f"(sha256 of 8 MiB for scale: "
          f"{median_ms(lambda: hashlib.sha256(b'x' * (8 << 20)).digest()):.2f} ms)")


if __name__ == "__main__":
    main()
