"""Configuration: the documented file is accepted as is; a bad one stops every command."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    (("kind = \"dicesms\"", "kind = \"smpp\""), "$.sources[1].kind"),
    (("name = \"dice\"", "name = \"ib\""), "sources[1].name: duplicate source name 'ib'"),
    (("name = \"dice\"\n", ""), "missing required field `name`"),
    (("env:DICE_TOKEN", "env:NOT_SET_ANYWHERE"),
     "sources[1].token: environment variable NOT_SET_ANYWHERE is not set"),
    (("pull_interval_s = 300", "pull_interval_s = 300\ncolour = \"red\""), "unknown field"),
    (("https://dicesms.asia", "ftp://dicesms.asia"), "sources[1].base_url"),
    (("basic = {", "unauthenticated = true\nbasic = {"), "unauthenticated"),
    (("[api]", "[api"), "not valid TOML"),
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
