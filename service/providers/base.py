"""What every provider kind shares: the source settings' common part, webhook credentials,
and `Provider`, the one object through which the rest of the service uses a kind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import msgspec

from service import metrics, rules
from service.pricing import Rate
from service.providers import Rejection, Report

if TYPE_CHECKING:
    from service.pages import Pages

Decoder = Callable[[bytes], tuple[list[Report], list[Rejection]]]
STATUS_GROUPS = ("PENDING", "DELIVERED", "UNDELIVERABLE", "EXPIRED", "REJECTED")
# Seconds between passes: more than nothing, at most a week.
Interval = Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)]
# A delay: nothing, up to a week.
Delay = Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)]


def sweep_problem(lookback_s: float, settle_s: float) -> tuple[str, str] | None:
    """A `settle_s` that would leave a pass's window nothing of the lookback to read."""
    if settle_s >= lookback_s:
        return "settle_s", f"{settle_s:g} leaves nothing of lookback_s ({lookback_s:g}) to read"
    return None


class Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class BasicAuth(Strict, frozen=True):
    username: str
    password: str


class TokenAuth(Strict, frozen=True):
    value: str
    header: str = "X-Webhook-Token"


class StandardWebhooksAuth(Strict, frozen=True):
    secrets: list[str]
    tolerance_s: int = 300


class TwilioSignatureAuth(Strict, frozen=True):
    """X-Twilio-Signature: HMAC-SHA1 of the URL Twilio called and the sorted form parameters,
    keyed by the account's Auth Token (two while it is rotated)."""

    auth_tokens: list[str]
    public_url: str  # this webhook's URL exactly as given to Twilio (behind a proxy we cannot know it)


class VonageSignatureAuth(Strict, frozen=True):
    """Vonage's signed webhooks: `sig` among the parameters, over the sorted parameters and
    `timestamp`, with the account's signature secret (two while it is rotated) and method."""

    secret: str | None = None  # one secret: the form of earlier configurations
    method: str = "sha256"  # md5hash, md5, sha1, sha256 or sha512, as set in the dashboard
    tolerance_s: int = 300
    secrets: list[str] = []  # several while rotating: a sig by any of them is taken

    @property
    def keys(self) -> list[str]:
        """The secrets a `sig` may be made with: `secrets`, or the one `secret`."""
        return self.secrets if self.secret is None else [self.secret]


class SinchSignatureAuth(Strict, frozen=True):
    """Sinch's signed callbacks: X-Sinch-Webhook-Signature, the base64 HMAC-SHA256 of
    "{body}.{nonce}.{timestamp}" with the callback's secret (several while rotating), sent
    with X-Sinch-Webhook-Signature-Nonce and -Timestamp (seconds since 1970)."""

    secrets: list[str]
    tolerance_s: int = 300


class WebhookConfig(Strict, frozen=True):
    basic: BasicAuth | None = None
    token: TokenAuth | None = None
    standard_webhooks: StandardWebhooksAuth | None = None
    twilio_signature: TwilioSignatureAuth | None = None
    vonage_signature: VonageSignatureAuth | None = None
    sinch_signature: SinchSignatureAuth | None = None
    unauthenticated: bool = False
    allow_ips: list[str] = []

    @property
    def disabled_reason(self) -> str | None:
        """Why this webhook must refuse everything, or None when it can accept."""
        if self.basic and not (self.basic.username and self.basic.password):
            return "basic credentials are empty"
        if self.token and not (self.token.value and self.token.header):
            return "token is empty"
        if self.standard_webhooks and not all(self.standard_webhooks.secrets or [""]):
            return "a standard_webhooks secret is empty"
        if self.twilio_signature and not all(self.twilio_signature.auth_tokens or [""]):
            return "a twilio_signature auth token is empty"
        if self.vonage_signature and not all(self.vonage_signature.keys or [""]):
            return "a vonage_signature secret is empty"
        if self.sinch_signature and not all(self.sinch_signature.secrets or [""]):
            return "a sinch_signature secret is empty"
        return None

    @property
    def schemes(self) -> list[object]:
        """The credentials given (a valid table has exactly one, or unauthenticated)."""
        return [s for s in (self.basic, self.token, self.standard_webhooks,
                            self.twilio_signature, self.vonage_signature,
                            self.sinch_signature) if s is not None]


class SourceBase(Strict, frozen=True):
    """One `[[sources]]` table: the fields every kind has. Each kind subclasses it with a
    `kind` tag and its own settings."""

    name: str
    base_url: str
    pull_interval_s: Interval = 60.0
    webhook: WebhookConfig | None = None
    # The rate card that prices messages the provider reports no price for (service.pricing):
    # `[[sources.rates]]` tables, and those of a CSV file (read at load, added to `rates`).
    rates: list[Rate] = msgspec.field(default_factory=list)
    rates_file: str | None = None

    @property
    def pullable(self) -> bool:
        """Whether it has what a pull needs (credentials)."""
        raise NotImplementedError

    @property
    def region(self) -> str | None:
        """The region national numbers in its reports are read in; None: international."""
        return None

    def identify(self, to: str | None, sent_at: datetime,
                 given_id: str | None) -> tuple[str | None, str | None]:
        """A registration's recipient and message id (`given_id`) as this source's reports
        will carry them: `to` read as its reports' numbers are. Raises OutOfBounds for a registration
        its reports could never match."""
        return (rules.recipient(to, self.region).to if to else None), given_id

    def problem(self) -> tuple[str, str] | None:
        """A (key, what is wrong) the generic checks cannot see, or None."""
        return None


class Status(NamedTuple):
    """One row of a kind's status table: what a raw status means here, and where that
    comes from."""

    group: str  # one of STATUS_GROUPS
    final: bool  # the provider says no further report follows
    source: str  # the provider's page (or SDK file) this row follows
    # An intermediate status that may be followed by nothing: the reconciler makes it final
    # once this long has passed since it was reported (and records that in the history).
    closes_after_s: float | None = None


def status(group: str, source: str, *, final: bool | None = None,
           closes_after_s: float | None = None) -> Status:
    """A table row; final unless its group is PENDING, or `final` says otherwise."""
    return Status(group, rules.is_final(group) if final is None else final, source,
                  closes_after_s)


UNMAPPED = Status(rules.PENDING, False, "not in the table: kept raw, counted")


class StatusTable:
    """A kind's documented status table, overridden per source by its `status_map`: raw
    status (case-insensitive) to a `Status`. A status it cannot map is kept raw by the
    caller, treated as PENDING, and counted here (dlr_unmapped_statuses_total)."""

    def __init__(self, source: str, defaults: Mapping[str, Status],
                 overrides: Mapping[str, str]) -> None:
        self.source = source
        self.table = {k.lower(): v for k, v in defaults.items()} | {
            k.lower(): status(v.upper(), f"status_map of source {source}")
            for k, v in overrides.items()}
        self.unmapped: dict[str, int] = {}

    def row(self, raw: str) -> Status:
        found = self.table.get(raw.lower())
        if found is not None:
            return found
        self.unmapped[raw] = self.unmapped.get(raw, 0) + 1
        metrics.count_unmapped(self.source, raw, 1)
        return UNMAPPED

    def group(self, raw: str) -> str:
        return self.row(raw).group

    def state(self, raw: str) -> dict[str, Any]:
        """The observation fields a raw status gives: its group and whether it is final."""
        found = self.row(raw)
        return {"status": found.group, "final": found.final}

    def closing(self) -> dict[str, float]:
        """Raw statuses that close after a while (lower case), and after how long."""
        return {raw: row.closes_after_s for raw, row in self.table.items()
                if row.closes_after_s is not None and not row.final}


def status_map_problem(status_map: Mapping[str, str]) -> tuple[str, str] | None:
    """A `status_map` entry whose group is not one of the five, as a (key, problem)."""
    for raw, group in status_map.items():
        if group.upper() not in STATUS_GROUPS:  # a typo would leave messages never final
            return f"status_map.{raw}", f"{group!r} is not one of {', '.join(STATUS_GROUPS)}"
    return None


@dataclass(frozen=True)
class Provider:
    """Everything the service asks of one provider kind.

    `decoder(source, url, content_type)` reads one body of that source: pushed (no url)
    or pulled from `url`, when it arrives and when it is replayed. `pull(pages, source)`
    is one reconcile pass; it fetches through `pages`, which keeps each page raw, then
    merges it.
    """

    kind: str
    config: type[SourceBase]
    decoder: Callable[[Any, str | None, str | None], Decoder]
    pull: Callable[[Pages, Any], Awaitable[None]]
    takes_pushes: bool = False
    push_by_get: bool = False  # its pushes may come as GET, the report in the query string
    # The largest body a push of this kind can be, checked as it is read (and before, by its
    # Content-Length); None: DLR_MAX_BODY_BYTES. Whatever the credentials: no provider
    # sends more, and a signed kind's body is read before its sender is known.
    max_push_bytes: int | None = None
    # The source's status table (its kind's rows and its `status_map`), by lower-cased raw
    # status: what the reconciler closes when an intermediate status outlives its window.
    statuses: Callable[[Any], Mapping[str, Status]] = lambda source: {}

    def closing(self, source: Any) -> dict[str, float]:
        """The source's intermediate statuses that close after a while, and after how long."""
        return {raw: row.closes_after_s for raw, row in self.statuses(source).items()
                if row.closes_after_s is not None and not row.final}
