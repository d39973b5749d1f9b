"""The provider kinds, by the `kind` of a `[[sources]]` table. A new kind is one package
under service/providers and one line here."""

from __future__ import annotations

from service.providers import dicesms, infobip, sinch, twilio, vonage
from service.providers.base import Provider, SourceBase
from service.providers.dicesms import pull as dicesms_pull
from service.providers.infobip import pull as infobip_pull
from service.providers.sinch import pull as sinch_pull
from service.providers.twilio import pull as twilio_pull
from service.providers.vonage import pull as vonage_pull

PROVIDERS = (
    Provider("infobip", infobip.InfobipSource, infobip.decoder, infobip_pull.pull,
             takes_pushes=True),
    Provider("dicesms", dicesms.DiceSmsSource, dicesms.decoder, dicesms_pull.pull),
    Provider("twilio", twilio.TwilioSource, twilio.decoder, twilio_pull.pull, takes_pushes=True,
             max_push_bytes=twilio.MAX_CALLBACK_BYTES),
    Provider("vonage", vonage.VonageSource, vonage.decoder, vonage_pull.pull, takes_pushes=True,
             push_by_get=True, max_push_bytes=vonage.MAX_RECEIPT_BYTES),
    Provider("sinch", sinch.SinchSource, sinch.decoder, sinch_pull.pull, takes_pushes=True,
             max_push_bytes=sinch.MAX_CALLBACK_BYTES),
)
# every config of PROVIDERS
Source = infobip.InfobipSource | dicesms.DiceSmsSource | twilio.TwilioSource | \
    vonage.VonageSource | sinch.SinchSource
_BY_CONFIG = {p.config: p for p in PROVIDERS}


def provider(source: SourceBase) -> Provider:
    return _BY_CONFIG[type(source)]
