"""The provider kinds, by the `kind` of a `[[sources]]` table. A new kind is one package
under service/providers and one line here."""

from __future__ import annotations

from service.providers import dicesms, infobip
from service.providers.base import Provider, SourceBase
from service.providers.dicesms import pull as dicesms_pull
from service.providers.infobip import pull as infobip_pull

PROVIDERS = (
    Provider("infobip", infobip.InfobipSource, infobip.decoder, infobip_pull.pull,
             takes_pushes=True),
    Provider("dicesms", dicesms.DiceSmsSource, dicesms.decoder, dicesms_pull.pull),
)
Source = infobip.InfobipSource | dicesms.DiceSmsSource  # every config of PROVIDERS
_BY_CONFIG = {p.config: p for p in PROVIDERS}


def provider(source: SourceBase) -> Provider:
    return _BY_CONFIG[type(source)]
