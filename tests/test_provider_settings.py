"""The README's configuration of each new provider loads as written; bad values of their
settings stop the load with the key named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import service.app  # noqa: F401 (imports the provider kinds in their order)
from service.config import load_settings
from service.errors import ConfigError
from service.providers.sinch import SinchSource
from service.providers.twilio import TwilioSource
from service.providers.vonage import VonageSource

README = Path(__file__).parent.parent / "README.md"


def readme_toml(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(f"### {heading}"):]
    found = re.search(r"```toml\n(.*?)```", section, re.S)
    assert found is not None
    return found.group(1)


def load(tmp_path: Path, toml: str) -> object:
    path = tmp_path / "dlr.toml"
    path.write_text(toml)
    names = set(re.findall(r'"env:([A-Z_]+)"', toml))
    return load_settings({"DLR_CONFIG": str(path)} | {n: f"value-of-{n}" for n in names})


@pytest.mark.parametrize(("heading", "kind"), [("Twilio", TwilioSource),
                                               ("Vonage (SMS API)", VonageSource),
                                               ("Sinch (SMS REST API)", SinchSource)])
def test_the_readme_configuration_loads(tmp_path: Path, heading: str, kind: type) -> None:
    settings = load(tmp_path, readme_toml(heading))
    (source,) = settings.sources.values()  # type: ignore[attr-defined]
    assert isinstance(source, kind) and source.pullable and source.webhook is not None


@pytest.mark.parametrize(("heading", "change", "message"), [
    ("Twilio", ('public_url = "https://hooks.example.com/webhooks/tw"', 'public_url = "hooks"'),
     "sources[0].webhook.twilio_signature.public_url"),
    ("Twilio", ('auth_tokens = ["env:TWILIO_AUTH_TOKEN"]', "auth_tokens = []"),
     "sources[0].webhook.twilio_signature.auth_tokens"),
    ("Twilio", ("pull_interval_s = 300", 'pull_interval_s = 300\nstatus_map = { sent = "SENT" }'),
     "sources[0].status_map.sent"),
    ("Vonage (SMS API)", ('method = "sha256"', 'method = "sha3"'),
     "sources[0].webhook.vonage_signature.method"),
    ("Vonage (SMS API)", ('currency = "EUR"', 'currency = "euro"'), "sources[0].currency"),
    ("Vonage (SMS API)", ("settle_s = 600", "settle_s = 86400"), "sources[0].settle_s"),
    ("Vonage (SMS API)", ("full_interval_s = 86400", "full_interval_s = 0"),
     "sources[0].full_interval_s"),
    ("Sinch (SMS REST API)", ("pull_interval_s = 300",
                              'pull_interval_s = 300\nstatus_map = { Queued = "Q" }'),
     "sources[0].status_map.Queued"),
])
def test_bad_provider_settings_name_the_key(tmp_path: Path, heading: str,
                                            change: tuple[str, str], message: str) -> None:
    toml = readme_toml(heading)
    assert change[0] in toml
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(tmp_path, toml.replace(*change))
