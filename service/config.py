"""Settings, built once from DLR_* environment variables and the TOML file named by DLR_CONFIG.

Nothing here runs at import time: `load_settings()` is called by the CLI and by tests.
Any problem raises ConfigError with one line that names the key and what is wrong.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from service import pricing
from service.errors import ConfigError
from service.providers import twilio

# The source settings live with their kinds; named here too, where settings are looked for.
from service.providers.base import BasicAuth as BasicAuth
from service.providers.base import StandardWebhooksAuth as StandardWebhooksAuth
from service.providers.base import Strict
from service.providers.base import TokenAuth as TokenAuth
from service.providers.base import VonageSignatureAuth as VonageSignatureAuth
from service.providers.base import WebhookConfig as WebhookConfig
from service.providers.dicesms import DiceSmsSource as DiceSmsSource
from service.providers.infobip import InfobipSource as InfobipSource
from service.providers.registry import PROVIDERS, provider
from service.providers.registry import Source as Source

# read: messages, bulks, billing, changes, gaps; pii: with read, recipients' numbers in full
# and message texts (admin implies it); write: registrations; admin: runs, inbox.
Scope = Literal["read", "pii", "write", "admin"]
SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# A query string may carry a callbackData of 4000 characters of any script, percent-encoded.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_REQUEST_TIMEOUT_S = 30
DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_FIRST_BYTE_TIMEOUT_S = 5  # an idle new connection holds a slot this long at most
# Bytes of webhook bodies whose sender is not yet known good (a signature not yet checked,
# or a source that takes pushes unauthenticated), held at once across the process.
DEFAULT_UNVERIFIED_BODY_BYTES = 16 * 1024 * 1024
WEBHOOK_SCHEMES = ("basic, token, standard_webhooks, twilio_signature, vonage_signature, "
                   "sinch_signature")
SINCH_SECRET_MIN_CHARS = 16  # an HMAC key shorter than this is guessable
VONAGE_METHODS = ("md5hash", "md5", "sha1", "sha256", "sha512")  # the dashboard's choices
DEFAULT_WORKER_PORT = 9090
WEBHOOK_KEY_MIN_BYTES = 24  # shorter HMAC keys are weak; the Standard Webhooks examples use 24
VONAGE_SECRET_MIN_CHARS = 16  # the dashboard's signature secrets have 32 or more
MAX_TOLERANCE_S = 86400  # a signed request's timestamp may be this far from now, at most


class ApiToken(Strict, frozen=True):
    token: str
    scopes: list[Scope]


class ApiConfig(Strict, frozen=True):
    tokens: list[ApiToken] = msgspec.field(default_factory=list)


class FileConfig(Strict, frozen=True):
    api: ApiConfig = ApiConfig()
    sources: list[Source] = msgspec.field(default_factory=list)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None
    data_dir: Path = Path(".dlr")
    host: str = "127.0.0.1"
    port: int = 8080
    worker_port: int = DEFAULT_WORKER_PORT  # `worker`'s probes and metrics; 0: none
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS // 4  # one client address's share
    first_byte_timeout_s: int = DEFAULT_FIRST_BYTE_TIMEOUT_S  # for a new connection to speak
    unverified_body_bytes: int = DEFAULT_UNVERIFIED_BODY_BYTES
    request_timeout_s: int = DEFAULT_REQUEST_TIMEOUT_S  # for a whole request to arrive
    shutdown_timeout_s: int = 30  # after SIGTERM: for requests in flight, then the reconciler
    db_timeout_s: float = 5.0
    workers: int = 1
    retention_months: int = 13  # whole months of inbox and history kept before this one
    tls_cert: Path | None = None
    tls_key: Path | None = None
    trusted_proxies: tuple[str, ...] = ()  # whose X-Forwarded-For names the client
    api_tokens: tuple[ApiToken, ...] = ()
    sources: Mapping[str, Source] = {}
    config: Path | None = None  # DLR_CONFIG; None: no sources, no API tokens


def no_source(settings: Settings, name: str) -> str:
    """Why `name` is not a source: DLR_CONFIG is not set, or the names it does give."""
    if settings.config is None:
        return f"no source named {name!r}: DLR_CONFIG is not set, so there are no sources"
    return (f"no source named {name!r} in DLR_CONFIG ({settings.config}); its sources: "
            f"{', '.join(settings.sources) or 'none'}")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read DLR_* variables and the DLR_CONFIG file; raise ConfigError on the first problem."""
    env = os.environ if environ is None else environ
    file_config = FileConfig()
    config_dir = Path()
    path = env.get("DLR_CONFIG")
    if path:
        file_config = _load_file(Path(path), env)
        config_dir = Path(path).parent
    return Settings(
        database_url=env.get("DLR_DATABASE_URL") or None,
        data_dir=Path(env.get("DLR_DATA_DIR") or ".dlr"),
        host=env.get("DLR_HOST") or "127.0.0.1",
        port=_int(env, "DLR_PORT", 8080, 1, 65535),
        worker_port=_int(env, "DLR_WORKER_PORT", DEFAULT_WORKER_PORT, 0, 65535),
        max_body_bytes=_int(env, "DLR_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1024, 1 << 30),
        max_header_bytes=_int(env, "DLR_MAX_HEADER_BYTES", DEFAULT_MAX_HEADER_BYTES, 1024, 1 << 20),
        max_connections=(cap := _int(env, "DLR_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS, 1,
                                     100_000)),
        max_connections_per_client=_int(env, "DLR_MAX_CONNECTIONS_PER_CLIENT",
                                        max(1, cap // 4), 1, cap),
        first_byte_timeout_s=_int(env, "DLR_FIRST_BYTE_TIMEOUT_S", DEFAULT_FIRST_BYTE_TIMEOUT_S,
                                  1, 300),
        unverified_body_bytes=_int(env, "DLR_UNVERIFIED_BODY_BYTES",
                                   DEFAULT_UNVERIFIED_BODY_BYTES, 64 * 1024, 1 << 32),
        request_timeout_s=_int(env, "DLR_REQUEST_TIMEOUT_S", DEFAULT_REQUEST_TIMEOUT_S, 1, 3600),
        shutdown_timeout_s=_int(env, "DLR_SHUTDOWN_TIMEOUT_S", 30, 1, 3600),
        db_timeout_s=_int(env, "DLR_DB_TIMEOUT_S", 5, 1, 300),
        workers=_int(env, "DLR_WORKERS", 1, 1, 64),
        retention_months=_int(env, "DLR_RETENTION_MONTHS", 13, 1, 1200),
        **_tls(env),
        trusted_proxies=_networks(env, "DLR_TRUSTED_PROXIES"),
        api_tokens=tuple(file_config.api.tokens),
        sources=_check_sources(file_config.sources, config_dir),
        config=Path(path) if path else None,
    )


def _tls(env: Mapping[str, str]) -> dict[str, Path]:
    """DLR_TLS_CERT and DLR_TLS_KEY (PEM files): both, or neither."""
    cert, key = env.get("DLR_TLS_CERT"), env.get("DLR_TLS_KEY")
    if not cert and not key:
        return {}
    if not (cert and key):
        raise ConfigError("DLR_TLS_CERT and DLR_TLS_KEY: set both, or neither")
    for name, path in (("DLR_TLS_CERT", cert), ("DLR_TLS_KEY", key)):
        if not Path(path).is_file():
            raise ConfigError(f"{name}: no file at {path}")
    return {"tls_cert": Path(cert), "tls_key": Path(key)}


def _networks(env: Mapping[str, str], key: str) -> tuple[str, ...]:
    """Comma-separated IP addresses and networks, each spelled as uvicorn reads it."""
    found = []
    for entry in (e.strip() for e in env.get(key, "").split(",")):
        if not entry:
            continue
        try:
            address = ipaddress.ip_network(entry, strict=False) if "/" in entry \
                else ipaddress.ip_address(entry)
        except ValueError:
            raise ConfigError(f"{key}: {entry!r} is not an IP address or network") from None
        found.append(str(address))
    return tuple(found)


def _int(env: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = env.get(key)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key}: {raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{key}: {value} is outside {low}..{high}")
    return value


def _load_file(path: Path, env: Mapping[str, str]) -> FileConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"DLR_CONFIG: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"DLR_CONFIG: {path} is not valid TOML: {exc}") from None
    resolved = _resolve_env(raw, env, "")
    try:
        return msgspec.convert(resolved, FileConfig)
    except msgspec.ValidationError as exc:
        said = str(exc)
        if said.endswith(".kind`") or "missing required field `kind`" in said:
            said += f"; kind is one of {', '.join(p.kind for p in PROVIDERS)}"
        raise ConfigError(f"{path}: {said}") from None


def _resolve_env(value: Any, env: Mapping[str, str], where: str) -> Any:
    """Replace every "env:NAME" string with that variable's value."""
    if isinstance(value, dict):
        return {k: _resolve_env(v, env, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        if name not in env:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return env[name]
    return value


def _check_sources(sources: list[Source], config_dir: Path = Path()) -> dict[str, Source]:
    by_name: dict[str, Source] = {}
    for i, source in enumerate(sources):
        where = f"sources[{i}]"
        if not SOURCE_NAME.match(source.name):
            raise ConfigError(f"{where}.name: {source.name!r} must be lowercase letters, "
                              "digits, '-' or '_'")
        if source.name in by_name:
            raise ConfigError(f"{where}.name: duplicate source name {source.name!r}")
        if not re.match(r"^https?://[^/]+", source.base_url):
            raise ConfigError(f"{where}.base_url: {source.base_url!r} is not an http(s) URL")
        if source.webhook is not None:
            kind = provider(source)
            if not kind.takes_pushes:
                raise ConfigError(f"{where}.webhook: a {kind.kind} source takes no pushes (its "
                                  "reports are pulled); remove the section")
            _check_webhook(source.webhook, f"{where}.webhook")
        if problem := source.problem():
            key, what = problem
            raise ConfigError(f"{where}.{key}: {what}")
        if source.rates_file is not None or source.rates:
            source = msgspec.structs.replace(source, rates=_rate_card(source, where, config_dir))
        by_name[source.name] = source
    return by_name


def _rate_card(source: Source, where: str, config_dir: Path) -> list[pricing.Rate]:
    """The source's rates: its `rates` tables, then the rows of its `rates_file` (a path
    relative to the TOML file's folder), each checked; ConfigError names the first bad one."""
    rates = list(source.rates)
    lines: list[int] = []
    if source.rates_file is not None:
        path = config_dir / source.rates_file
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ConfigError(f"{where}.rates_file: cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{where}.rates_file: {path} is not UTF-8 text") from None
        try:
            read = pricing.read_csv(text)
        except pricing.RateProblem as exc:
            raise ConfigError(f"{where}.rates_file: {path}: {exc}") from None
        lines = [line for line, _ in read]
        rates += [rate for _, rate in read]
    def name(index: int) -> str:
        if index < len(source.rates):
            return f"{where}.rates[{index}]"
        return f"{where}.rates_file: {source.rates_file} line {lines[index - len(source.rates)]}"

    try:
        pricing.card_of(rates)
    except pricing.RateProblem as exc:
        index = exc.index or 0
        key = (f".{exc.key}" if index < len(source.rates) else f": {exc.key}") if exc.key else ""
        problem = exc.problem
        if exc.same_as is not None:
            problem = (f"applies to what {name(exc.same_as).removeprefix(where + '.')} applies "
                       "to, from the same date; keep one")
        raise ConfigError(f"{name(index)}{key}: {problem}") from None
    return rates


def _check_webhook(hook: WebhookConfig, where: str) -> None:
    schemes = hook.schemes
    if len(schemes) > 1:
        raise ConfigError(f"{where}: choose one of {WEBHOOK_SCHEMES}")
    if not schemes and not hook.unauthenticated:
        raise ConfigError(f"{where}: give one of {WEBHOOK_SCHEMES} (or "
                          "unauthenticated = true)")
    if schemes and hook.unauthenticated:
        raise ConfigError(f"{where}.unauthenticated: cannot be combined with credentials")
    if hook.standard_webhooks:
        secrets = hook.standard_webhooks.secrets
        if not secrets:
            raise ConfigError(f"{where}.standard_webhooks.secrets: give at least one secret")
        for i, secret in enumerate(secrets):
            _check_secret(secret, f"{where}.standard_webhooks.secrets[{i}]")
        _check_tolerance(hook.standard_webhooks.tolerance_s, f"{where}.standard_webhooks")
    if hook.twilio_signature:
        if not hook.twilio_signature.auth_tokens:
            raise ConfigError(f"{where}.twilio_signature.auth_tokens: give the account's Auth "
                              "Token (and its secondary one while rotating)")
        if problem := twilio.public_url_problem(hook.twilio_signature.public_url):
            raise ConfigError(f"{where}.twilio_signature.public_url: {problem}")
    if hook.sinch_signature:
        if not hook.sinch_signature.secrets:
            raise ConfigError(f"{where}.sinch_signature.secrets: give the callback's secret "
                              "(and the next one while rotating)")
        for i, secret in enumerate(hook.sinch_signature.secrets):
            if secret and len(secret) < SINCH_SECRET_MIN_CHARS:
                raise ConfigError(f"{where}.sinch_signature.secrets[{i}]: shorter than "
                                  f"{SINCH_SECRET_MIN_CHARS} characters")
        _check_tolerance(hook.sinch_signature.tolerance_s, f"{where}.sinch_signature")
    if hook.vonage_signature:
        _check_vonage(hook.vonage_signature, f"{where}.vonage_signature")
    for i, cidr in enumerate(hook.allow_ips):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"{where}.allow_ips[{i}]: {cidr!r} is not an IP network") from None


def _check_vonage(auth: VonageSignatureAuth, where: str) -> None:
    """Vonage's signature secrets (`secrets`, or the one `secret` of earlier files), each long
    enough to be one; the message never repeats a secret."""
    if auth.secret is not None and auth.secrets:
        raise ConfigError(f"{where}: give secrets or secret, not both")
    if not auth.keys:
        raise ConfigError(f"{where}.secrets: give the signature secret (and the new one while "
                          "rotating)")
    for i, secret in enumerate(auth.keys):
        if len(secret) < VONAGE_SECRET_MIN_CHARS:
            key = f"{where}.secret" if auth.secret is not None else f"{where}.secrets[{i}]"
            raise ConfigError(f"{key}: {len(secret)} characters; a signature secret has at "
                              f"least {VONAGE_SECRET_MIN_CHARS} (the dashboard's have 32 or more)")
    if auth.method not in VONAGE_METHODS:
        raise ConfigError(f"{where}.method: {auth.method!r} is not one of "
                          f"{', '.join(VONAGE_METHODS)}")
    _check_tolerance(auth.tolerance_s, where)


def _check_tolerance(seconds: int, where: str) -> None:
    """A signature's window: a day at most (a replayed request is taken within it)."""
    if not 1 <= seconds <= MAX_TOLERANCE_S:
        raise ConfigError(f"{where}.tolerance_s: {seconds} is outside 1..{MAX_TOLERANCE_S}")


def _check_secret(secret: str, where: str) -> None:
    """A Standard Webhooks secret is "whsec_" and the base64 of a key of 24 bytes or more.

    An empty key would verify anyone's signature, so a bad one stops the load instead of
    disabling the webhook; the message never repeats the secret.
    """
    if not secret.removeprefix("whsec_"):
        raise ConfigError(f"{where}: is empty")
    if not secret.startswith("whsec_"):
        raise ConfigError(f"{where}: must be whsec_ followed by the key in base64")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise ConfigError(f"{where}: the part after whsec_ is not base64") from None
    if len(key) < WEBHOOK_KEY_MIN_BYTES:
        raise ConfigError(f"{where}: the key is {len(key)} bytes; use at least "
                          f"{WEBHOOK_KEY_MIN_BYTES} random bytes")
