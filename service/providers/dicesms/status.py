"""DiceSMS's statuses: words and digits, as its SMS Delivery Report API shows them.

Source: the DiceSMS "SMS Delivery Report" documents (shared/seeds 000 and 001): `status` is
a word (`SENT`, `UNDELIVERABLE`) or a digit string (`"1"`, `"4"`). Cross-read, the row sent
at 2025-11-04T17:00:45.153834+05:45 is `"4"` in the batch-id listing and `UNDELIVERABLE`
in the report, and `"1"` is the only row with a `delivered_at`: 1 is delivered, 4
undeliverable. Any status with a `delivered_at` whose word or digit is not a failure is
DELIVERED; an explicit failure stands, whatever its timestamps say.
"""

from __future__ import annotations

from service.providers.base import Status, status

DOC = "DiceSMS, SMS Delivery Report API (shared/seeds/000, 001)"

STATUSES: dict[str, Status] = {
    "SENT": status("PENDING", DOC),
    "PENDING": status("PENDING", DOC),
    "DELIVERED": status("DELIVERED", DOC),
    "UNDELIVERABLE": status("UNDELIVERABLE", DOC),
    "EXPIRED": status("EXPIRED", DOC),
    "REJECTED": status("REJECTED", DOC),
    "1": status("DELIVERED", DOC),
    "4": status("UNDELIVERABLE", DOC),
}
