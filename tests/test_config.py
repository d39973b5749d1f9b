"""Configuration: the documented file is accepted as is; a bad one stops every command."""

from __future__ import annotations

import base64
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import cli
from service.config import DiceSmsSource, InfobipSource, load_settings
from service.errors import ConfigError

DOCUMENTED = '''
[api]
tokens = [ { token = "env:DLR_API_TOKEN", scopes = ["read", "write", "admin"] } ]

[[sources]]
name = "ib"
kind = "infobip"
base_url = "https://api.infobip.example"
api_key = "env:IB_API_KEY"          # pulls send "Authorization: App <key>"
pull_interval_s = 60
[sources.webhook]
basic = { username = "hook", password = "env:IB_HOOK_PASSWORD" }

[[sources]]
name = "dice"
kind = "dicesms"
base_url = "https://dicesms.asia"
token = "env:DICE_TOKEN"            # pulls send "Authorization: Token <token>"
default_region = "NP"
pull_interval_s = 300
'''
ENV = {"DLR_API_TOKEN": "api", "IB_API_KEY": "key", "IB_HOOK_PASSWORD": "pw",
       "DICE_TOKEN": "dice"}


def write(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "dlr.toml"
    path.write_text(text)
    return ENV | {"DLR_CONFIG": str(path)}


def test_documented_file_is_accepted(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, DOCUMENTED) | {"DLR_PORT": "9000"})
    ib, dice = settings.sources["ib"], settings.sources["dice"]
    assert isinstance(ib, InfobipSource) and isinstance(dice, DiceSmsSource)
    assert ib.api_key == "key"
    assert ib.webhook is not None and ib.webhook.basic is not None
    assert ib.webhook.basic.password == "pw"
    assert dice.token == "dice" and dice.default_region == "NP"
    assert settings.api_tokens[0].token == "api"
    assert settings.port == 9000
    assert settings.database_url is None


def test_defaults_without_a_file() -> None:
    settings = load_settings({})
    assert (settings.host, settings.port, str(settings.data_dir)) == ("127.0.0.1", 8080, ".dlr")
    assert settings.sources == {}


@pytest.mark.parametrize(("change", "message"), [
    (("kind = \"dicesms\"", "kind = \"smpp\""), "Invalid value 'smpp' - at `$.sources[1].kind`; "
     "kind is one of infobip, dicesms, twilio, vonage, sinch"),
    (("kind = \"dicesms\"\n", ""), "missing required field `kind` - at `$.sources[1]`; kind is "
     "one of infobip, dicesms, twilio, vonage, sinch"),
    (("name = \"dice\"", "name = \"ib\""), "sources[1].name: duplicate source name 'ib'"),
    (("name = \"dice\"\n", ""), "missing required field `name`"),
    (("env:DICE_TOKEN", "env:NOT_SET_ANYWHERE"),
     "sources[1].token: environment variable NOT_SET_ANYWHERE is not set"),
    (("pull_interval_s = 300", "pull_interval_s = 300\ncolour = \"red\""), "unknown field"),
    (("https://dicesms.asia", "ftp://dicesms.asia"), "sources[1].base_url"),
    (("basic = {", "unauthenticated = true\nbasic = {"), "unauthenticated"),
    (("[api]", "[api"), "not valid TOML"),
    (("pull_interval_s = 300", "pull_interval_s = 0"), "$.sources[1].pull_interval_s"),
    (("pull_interval_s = 60", "pull_interval_s = -5"), "$.sources[0].pull_interval_s"),
    (("pull_interval_s = 300", "pull_interval_s = 300\nwalk_interval_s = 0"),
     "$.sources[1].walk_interval_s"),
    (("pull_interval_s = 300", 'pull_interval_s = 300\nstatus_map = { "4" = "UNDELIVERED" }'),
     "sources[1].status_map.4: 'UNDELIVERED' is not one of PENDING"),
    (('default_region = "NP"', 'default_region = "Nepal"'), "sources[1].default_region"),
    (("pull_interval_s = 300", "pull_interval_s = 300\n[sources.webhook]\nunauthenticated = true"),
     "sources[1].webhook: a dicesms source takes no pushes"),
    (('basic = { username = "hook", password = "env:IB_HOOK_PASSWORD" }', ""),
     "sources[0].webhook: give one of basic, token, standard_webhooks"),
])
def test_bad_file_names_key_and_problem(tmp_path: Path, change: tuple[str, str],
                                        message: str) -> None:
    env = write(tmp_path, DOCUMENTED.replace(*change))
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert message in str(caught.value)


@pytest.mark.parametrize("command", [["serve"], ["migrate"]])
def test_every_command_exits_non_zero_with_one_line(tmp_path: Path, command: list[str],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in write(tmp_path, DOCUMENTED.replace("kind = \"dicesms\"",
                                                         "kind = \"x\"")).items():
        monkeypatch.setenv(key, value)
    assert cli.main(command) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("config error:") and "kind" in err


def test_bad_port_variable() -> None:
    with pytest.raises(ConfigError, match="DLR_PORT"):
        load_settings({"DLR_PORT": "eighty"})


SIGNED = DOCUMENTED.replace('basic = { username = "hook", password = "env:IB_HOOK_PASSWORD" }',
                            'standard_webhooks = { secrets = ["env:SW_0", "env:SW_1"] }')
B64 = set(string.ascii_letters + string.digits + "+/=")


def whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


GOOD_SECRETS = st.binary(min_size=24, max_size=64).map(whsec)
BAD_SECRETS = st.one_of(
    st.sampled_from(["", "whsec_", "whsec_ ", "WHSEC_" + whsec(b"k" * 32)[6:]]),
    st.binary(max_size=23).map(whsec),  # too short to be a key worth the name
    st.binary(min_size=24, max_size=64).map(lambda key: whsec(key)[6:]),  # no whsec_
    st.text(min_size=1).filter(lambda t: not set(t) <= B64).map(lambda t: "whsec_" + t),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(good=GOOD_SECRETS, bad=BAD_SECRETS, bad_first=st.booleans())
def test_weak_or_malformed_webhook_secrets_stop_the_load(tmp_path: Path, good: str, bad: str,
                                                         bad_first: bool) -> None:
    first, second = (bad, good) if bad_first else (good, bad)
    env = write(tmp_path, SIGNED) | {"SW_0": first, "SW_1": second}
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert message.startswith(f"sources[0].webhook.standard_webhooks.secrets[{int(not bad_first)}]: ")
    assert "\n" not in message
    if len(bad) > 8:
        assert bad.removeprefix("whsec_") not in message  # the secret itself is never shown


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=GOOD_SECRETS, second=GOOD_SECRETS)
def test_good_webhook_secrets_load(tmp_path: Path, first: str, second: str) -> None:
    settings = load_settings(write(tmp_path, SIGNED) | {"SW_0": first, "SW_1": second})
    hook = settings.sources["ib"].webhook
    assert hook is not None and hook.standard_webhooks is not None
    assert hook.standard_webhooks.secrets == [first, second]


def test_no_webhook_secret_at_all_stops_the_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^sources\[0\]\.webhook\.standard_webhooks\.secrets: "):
        load_settings(write(tmp_path, SIGNED.replace('"env:SW_0", "env:SW_1"', "")))


def test_empty_basic_credentials_still_only_disable_the_webhook(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, DOCUMENTED) | {"IB_HOOK_PASSWORD": ""})
    hook = settings.sources["ib"].webhook
    assert hook is not None and hook.disabled_reason == "basic credentials are empty"


@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["pull", "ib"], ["replay"]])
def test_a_weak_webhook_secret_stops_every_command(tmp_path: Path, command: list[str],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # a database that is not there: a command that got past the configuration fails otherwise
    env = write(tmp_path, SIGNED) | {"SW_0": whsec(b"k" * 32), "SW_1": "whsec_",
                                     "DLR_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
                                     "DLR_DB_TIMEOUT_S": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(command) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("config error: sources[0].webhook.standard_webhooks.secrets[1]: ")


VONAGE = """
[[sources]]
name = "vg"
kind = "vonage"
base_url = "https://api.nexmo.com"
[sources.webhook]
vonage_signature = { %s }
"""
VG_NEW, VG_OLD = "new-signature-secret-0123456789ab", "old-signature-secret-0123456789ab"


@pytest.mark.parametrize(("table", "secrets"), [
    (f'secrets = ["{VG_NEW}", "{VG_OLD}"], method = "sha512"', [VG_NEW, VG_OLD]),
    (f'secret = "{VG_OLD}"', [VG_OLD]),  # the one-secret form of earlier configurations
])
def test_vonage_signature_secrets_load(tmp_path: Path, table: str, secrets: list[str]) -> None:
    hook = load_settings(write(tmp_path, VONAGE % table)).sources["vg"].webhook
    assert hook is not None and hook.vonage_signature is not None
    assert hook.vonage_signature.keys == secrets


@pytest.mark.parametrize(("table", "message"), [
    (f'secret = "{VG_OLD}", secrets = ["{VG_NEW}"]',
     "sources[0].webhook.vonage_signature: give secrets or secret, not both"),
    ("method = \"sha256\"", "sources[0].webhook.vonage_signature.secrets: give the signature "
     "secret"),
    ("secrets = []", "sources[0].webhook.vonage_signature.secrets: give the signature secret"),
    (f'secrets = ["{VG_NEW}", "short-secret"]', "sources[0].webhook.vonage_signature.secrets[1]: "
     "12 characters; a signature secret has at least 16"),
    ('secret = ""', "sources[0].webhook.vonage_signature.secret: 0 characters; a signature "
     "secret has at least 16"),
    (f'secret = "{VG_NEW}", tolerance_s = 0',
     "sources[0].webhook.vonage_signature.tolerance_s: 0 is outside 1..86400"),
    (f'secret = "{VG_NEW}", tolerance_s = 86401',
     "sources[0].webhook.vonage_signature.tolerance_s: 86401 is outside 1..86400"),
])
def test_bad_vonage_signature_settings_name_the_key(tmp_path: Path, table: str,
                                                    message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, VONAGE % table))
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    assert "short-secret" not in str(caught.value)


@pytest.mark.parametrize("tolerance", [0, -5, 86401, 10**12])
def test_a_standard_webhooks_window_out_of_bounds_stops_the_load(tmp_path: Path,
                                                                 tolerance: int) -> None:
    signed = SIGNED.replace('"env:SW_1"] }', f'"env:SW_1"], tolerance_s = {tolerance} }}')
    env = write(tmp_path, signed) | {"SW_0": whsec(b"k" * 32), "SW_1": whsec(b"j" * 32)}
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert str(caught.value) == (f"sources[0].webhook.standard_webhooks.tolerance_s: {tolerance} "
                                 "is outside 1..86400")


@pytest.mark.parametrize("value", ["10.0.0.1, example.com", "10.0.0.0/33", "127.0.0.1;10.0.0.1"])
def test_bad_trusted_proxies_name_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^DLR_TRUSTED_PROXIES: "):
        load_settings({"DLR_TRUSTED_PROXIES": value})


def test_trusted_proxies_are_read_as_addresses_and_networks() -> None:
    assert load_settings({}).trusted_proxies == ()
    settings = load_settings({"DLR_TRUSTED_PROXIES": " 127.0.0.1, 10.0.0.7/8 ,::1,"})
    assert settings.trusted_proxies == ("127.0.0.1", "10.0.0.0/8", "::1")


def test_lower_case_status_map_values_are_accepted(tmp_path: Path) -> None:
    env = write(tmp_path, DOCUMENTED.replace(
        "pull_interval_s = 300", 'pull_interval_s = 300\nstatus_map = { "4" = "undeliverable" }'))
    dice = load_settings(env).sources["dice"]
    assert isinstance(dice, DiceSmsSource) and dice.status_map == {"4": "undeliverable"}


@pytest.mark.parametrize(("url", "code", "said"), [
    ("mysql://root@127.0.0.1/x", 2, "config error: DLR_DATABASE_URL: unsupported scheme 'mysql'"),
    ("postgresql://postgres@127.0.0.1:5432/no_such_database_here", 6,
     'database refused the connection: database "no_such_database_here" does not exist'),
    ("postgresql://no_such_role@127.0.0.1:5432/postgres", 6,
     'database refused the connection: role "no_such_role" does not exist'),
    # a password holding '@', unencoded: read as part of the host, or the host cut short
    ("postgresql://dlr:se@cret@127.0.0.1:5432/dlr", 2,
     "config error: DLR_DATABASE_URL: the host part holds an '@': percent-encode an '@' in "
     "the password as %40"),
    ("postgresql://dlr:se@cret.invalid/x@127.0.0.1:5432/dlr", 3,
     "database unavailable: the database host name does not resolve: percent-encode an '@' "
     "in the password as %40"),
    ("postgresql://dlr:se@c:ret@127.0.0.1:5432/dlr", 2,
     "config error: DLR_DATABASE_URL: not postgresql://user:password@host:5432/database; "
     "percent-encode"),
])
@pytest.mark.parametrize("command", ["migrate", "replay", "serve"])
def test_database_url_mistakes_are_one_line(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str], url: str,
                                            code: int, said: str, command: str) -> None:
    monkeypatch.setenv("DLR_DATABASE_URL", url)
    monkeypatch.delenv("DLR_CONFIG", raising=False)
    assert cli.main([command]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith(said) and "\n" not in err, err
    assert "cret" not in err and "ret@" not in err  # no part of a password


def test_a_data_dir_that_cannot_be_a_folder_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("")
    monkeypatch.delenv("DLR_DATABASE_URL", raising=False)
    monkeypatch.delenv("DLR_CONFIG", raising=False)
    monkeypatch.setenv("DLR_DATA_DIR", str(taken))
    assert cli.main(["migrate"]) == 2
    assert capsys.readouterr().err == (f"config error: DLR_DATA_DIR: cannot make the folder "
                                       f"{taken}: File exists\n")


def test_sslmode_is_read_as_asyncpg_ssl() -> None:
    from service import db

    assert db.asyncpg_url("postgres://u:p@h:5432/d?sslmode=require") == \
        "postgresql+asyncpg://u:p@h:5432/d?ssl=require"


def test_serve_on_a_busy_port_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("DLR_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/x")
        monkeypatch.delenv("DLR_CONFIG", raising=False)
        assert cli.main(["serve", "--port", str(port)]) == 7
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cannot listen: 127.0.0.1:{port}: ") and "\n" not in err
