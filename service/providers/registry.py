"""The provider kinds, by the `kind` of a `[[sources]]` table. A new kind is one package
under service/providers and one line here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from service.providers import dicesms, infobip, sinch, twilio, vonage
from service.providers.base import Provider, SourceBase, Status, StatusTable
from service.providers.dicesms import pull as dicesms_pull
from service.providers.infobip import pull as infobip_pull
from service.providers.infobip import status as infobip_status
from service.providers.sinch import pull as sinch_pull
from service.providers.twilio import pull as twilio_pull
from service.providers.vonage import pull as vonage_pull


def _table(rows: Mapping[str, Status]) -> Callable[[Any], Mapping[str, Status]]:
    """A kind's table under a source's `status_map`."""
    return lambda source: StatusTable(source.name, rows, source.status_map).table


PROVIDERS = (
    Provider("infobip", infobip.InfobipSource, infobip.decoder, infobip_pull.pull,
             takes_pushes=True, statuses=lambda source: infobip_status.table()),
    Provider("dicesms", dicesms.DiceSmsSource, dicesms.decoder, dicesms_pull.pull,
             statuses=lambda source: dicesms.StatusTable(source.status_map, source.name).table),
    Provider("twilio", twilio.TwilioSource, twilio.decoder, twilio_pull.pull, takes_pushes=True,
             max_push_bytes=twilio.MAX_CALLBACK_BYTES, statuses=_table(twilio.STATUSES)),
    Provider("vonage", vonage.VonageSource, vonage.decoder, vonage_pull.pull, takes_pushes=True,
             push_by_get=True, max_push_bytes=vonage.MAX_RECEIPT_BYTES,
             statuses=_table(vonage.STATUSES)),
    Provider("sinch", sinch.SinchSource, sinch.decoder, sinch_pull.pull, takes_pushes=True,
             max_push_bytes=sinch.MAX_CALLBACK_BYTES, statuses=_table(sinch.STATUSES)),
)
# every config of PROVIDERS
Source = infobip.InfobipSource | dicesms.DiceSmsSource | twilio.TwilioSource | \
    vonage.VonageSource | sinch.SinchSource
_BY_CONFIG = {p.config: p for p in PROVIDERS}


def provider(source: SourceBase) -> Provider:
    return _BY_CONFIG[type(source)]
