"""The schema, as SQLAlchemy Core tables; Alembic migrations create exactly this.

Text columns that take part in comparisons use the "C" collation, so that PostgreSQL
orders them by code point as Python does (the merge rule is evaluated in both).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Held (per transaction) by migrations and by partition changes, so that they never overlap.
SCHEMA_LOCK_KEY = 0x646C72  # "dlr"

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
CText = sa.Text(collation="C")


class Timestamp(sa.TypeDecorator[datetime]):
    """timestamptz, always read as an aware datetime. asyncpg writes the aware datetime.min
    and datetime.max as -infinity and infinity but reads those back naive: UTC goes back on."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    def coerce_compared_value(self, op: Any, value: Any) -> Any:
        return self.impl_instance.coerce_compared_value(op, value)  # time - timedelta, say


messages_seq = sa.Sequence("messages_seq", metadata=metadata)

inbox = sa.Table(
    "inbox",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("source", CText, nullable=False),
    sa.Column("channel", CText, nullable=False),  # push | pull
    # In the key because the table is partitioned by it (see service/retention.py).
    sa.Column("received_at", Timestamp, primary_key=True, server_default=sa.func.now()),
    sa.Column("content_type", sa.Text),
    sa.Column("body", sa.LargeBinary, nullable=False),
    # accepted | partial (some reports rejected) | rejected (nothing usable) | failed (bug)
    sa.Column("state", CText, nullable=False),
    sa.Column("accepted", sa.Integer, nullable=False),
    sa.Column("rejected", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("url", sa.Text),  # what a pulled body was fetched from; null for pushes
    postgresql_partition_by="RANGE (received_at)",
)
sa.Index("ix_inbox_source_received_at", inbox.c.source, inbox.c.received_at)
sa.Index("ix_inbox_rejected", inbox.c.id, postgresql_where=inbox.c.state != "accepted")

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("source", CText, primary_key=True),
    sa.Column("message_id", CText, primary_key=True),
    sa.Column("status", CText, nullable=False),
    sa.Column("final", sa.Boolean, nullable=False),
    sa.Column("obs_hash", sa.LargeBinary, nullable=False),
    sa.Column("status_id", sa.Integer),
    sa.Column("status_name", sa.Text),
    sa.Column("status_description", sa.Text),
    sa.Column("done_at", Timestamp),
    sa.Column("error_group_id", sa.Integer),
    sa.Column("error_group_name", sa.Text),
    sa.Column("error_id", sa.Integer),
    sa.Column("error_name", sa.Text),
    sa.Column("error_permanent", sa.Boolean),
    sa.Column("to", CText),
    sa.Column("bulk_id", CText),
    sa.Column("sender", CText),
    sa.Column("callback_data", CText),
    sa.Column("sent_at", Timestamp),
    sa.Column("sms_count", sa.Integer),
    sa.Column("price_amount", sa.Numeric),
    sa.Column("price_currency", CText),
    sa.Column("mcc_mnc", CText),
    sa.Column("operator", CText),
    sa.Column("text", CText),
    sa.Column("status_action", sa.Text),
    sa.Column("error_description", sa.Text),
    sa.Column("entity_id", CText),
    sa.Column("application_id", CText),
    sa.Column("campaign_reference_id", CText),
    sa.Column("part_ids", CText),  # rules.union_parts: the parts seen (Vonage), sorted
    # Bits of the fields above whose value no provider reported (rules.UNREPORTED): only a
    # registration gave it, or (sms_count) it was counted from the text.
    sa.Column("registered", sa.SmallInteger, nullable=False, server_default="0"),
    # A price a rate card estimated: how specific its rate was (service.pricing), and the
    # rate as JSON; 0 and null for a price the provider reported (or none).
    sa.Column("price_estimate", sa.SmallInteger, nullable=False, server_default="0"),
    sa.Column("price_rate", CText),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
    # The seq of the change that made the message final (null: not final, or made final
    # before this column existed). The merge writes it from the row it locked, so a write
    # can tell exactly which messages it made final, however many writers race.
    sa.Column("final_seq", sa.BigInteger),
    # ISO 3166 alpha-2 of `to` (rules.country), merged with it: null when it cannot be told
    sa.Column("country", CText),
)
sa.Index("ix_messages_seq", messages.c.seq)
sa.Index("ix_messages_to", messages.c.to)
# Only the primary key leads with `source`: on a table with no statistics yet (a new
# database), a generic plan for `source = $1 AND message_id = $2` may otherwise pick another
# index led by `source` and filter a whole source's rows for every look-up.
sa.Index("ix_messages_bulk_id_source", messages.c.bulk_id, messages.c.source)
# On md5(callback_data): callbackData may be 4000 characters, past what a btree entry holds
# (store.same_callback_data looks it up).
sa.Index("ix_messages_callback_data_md5", sa.func.md5(messages.c.callback_data))
sa.Index("ix_messages_sent_at", messages.c.sent_at)
# Messages at an intermediate status past PENDING (Infobip's DELIVERED_TO_OPERATOR): few,
# and looked for by the reconciler to close those whose window has passed
sa.Index("ix_messages_intermediate", messages.c.source,
         postgresql_where=sa.and_(~messages.c.final, messages.c.status != "PENDING"))

# What billing sums, kept per quarter hour of sent_at (every time zone's days are whole
# quarter hours) by the triggers of migration 0008 (functions replaced by the rate cards'
# migration, then by the country's), from each change's old and new rows: the same statement
# that merges a message moves its count, parts, amount and whether it is unpriced. `origin`
# is where the price came from ('reported', 'rate_card', null: none); `country` is the
# message's (null: unknown). `slot` spreads concurrent writers over
# rows of their own (the backend's pid), so they do not queue on one hot row; a summary
# adds the slots up.
BILLING_BUCKET = "15 minutes"
billing_rollup = sa.Table(
    "billing_rollup",
    metadata,
    sa.Column("bucket", Timestamp, nullable=False),
    sa.Column("source", CText, nullable=False),
    sa.Column("currency", CText),
    sa.Column("operator", CText),
    sa.Column("status", CText, nullable=False),
    sa.Column("slot", sa.SmallInteger, nullable=False),
    sa.Column("messages", sa.BigInteger, nullable=False),
    sa.Column("parts", sa.BigInteger, nullable=False),
    sa.Column("amount", sa.Numeric, nullable=False),
    sa.Column("origin", CText),
    sa.Column("unpriced", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("country", CText),
)
sa.Index("uq_billing_rollup_key", billing_rollup.c.bucket, billing_rollup.c.source,
         billing_rollup.c.currency, billing_rollup.c.operator, billing_rollup.c.status,
         billing_rollup.c.origin, billing_rollup.c.country, billing_rollup.c.slot, unique=True,
         postgresql_nulls_not_distinct=True)

# Every distinct observation of a message, once per channel it arrived through. Partitioned
# by the month the message was sent (else done, else received), taken from the report
# itself: the same report always lands in the same month, so the key still de-duplicates,
# a message's history stays together, and dropping a month drops whole histories.
message_history = sa.Table(
    "message_history",
    metadata,
    sa.Column("source", CText, primary_key=True),
    sa.Column("message_id", CText, primary_key=True),
    sa.Column("obs_hash", sa.LargeBinary, primary_key=True),
    sa.Column("channel", CText, primary_key=True),
    sa.Column("sent_month", Timestamp, primary_key=True),
    sa.Column("status", CText, nullable=False),
    sa.Column("status_id", sa.Integer),
    sa.Column("status_name", sa.Text),
    sa.Column("done_at", Timestamp),
    sa.Column("observed_at", Timestamp, nullable=False, server_default=sa.func.now()),
    postgresql_partition_by="RANGE (sent_month)",
)

# One row per reconciler pass over one source.
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("source", CText, nullable=False),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("finished_at", Timestamp),
    sa.Column("pages", sa.Integer, nullable=False, server_default="0"),
    sa.Column("reports", sa.Integer, nullable=False, server_default="0"),
    sa.Column("changed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rejected", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("detail", JSONB),  # e.g. the provider's own counters against ours
    sa.Column("bytes_fetched", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_kept", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("resighted", sa.Integer, nullable=False, server_default="0"),
    # records the pass's pages held (reports, messages, batches …), pages seen before too:
    # what a provider that charges per record returned bills
    sa.Column("records_fetched", sa.Integer, nullable=False, server_default="0"),
)
sa.Index("ix_runs_source_started_at", runs.c.source, runs.c.started_at)

# Who may pull a source now. A lease row rather than a session advisory lock, so that
# it survives a transaction-pooling PgBouncer (no session state between transactions).
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("source", CText, primary_key=True),
    sa.Column("holder", CText, nullable=False),
    sa.Column("expires_at", Timestamp, nullable=False),
)


# Where a source's reconciler left off (the DiceSMS listing walk's next URL, say).
pull_cursors = sa.Table(
    "pull_cursors",
    metadata,
    sa.Column("source", CText, primary_key=True),
    sa.Column("name", CText, primary_key=True),
    sa.Column("value", sa.Text),
    sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
)


# The body last kept for each URL a source's non-consuming endpoints were read from: a
# page fetched again with the same bytes is recorded as seen again, not kept again.
pull_bodies = sa.Table(
    "pull_bodies",
    metadata,
    sa.Column("source", CText, primary_key=True),
    sa.Column("url_hash", sa.LargeBinary, primary_key=True),  # SHA-256 of the URL
    sa.Column("body_hash", sa.LargeBinary, nullable=False),  # SHA-256 of the body
    sa.Column("inbox_id", sa.BigInteger, nullable=False),  # where that body is kept
    sa.Column("kept_at", Timestamp, nullable=False),
    sa.Column("etag", sa.Text),  # validators for a conditional GET
    sa.Column("last_modified", sa.Text),
)

# Each time a kept body was fetched again unchanged: when, and by which pass.
inbox_sightings = sa.Table(
    "inbox_sightings",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("inbox_id", sa.BigInteger, nullable=False),
    sa.Column("source", CText, nullable=False),
    sa.Column("run_id", sa.BigInteger),
    sa.Column("not_modified", sa.Boolean, nullable=False),  # a 304: the body was not sent
    sa.Column("seen_at", Timestamp, nullable=False, server_default=sa.func.now()),
)
sa.Index("ix_inbox_sightings_inbox_id", inbox_sightings.c.inbox_id)
sa.Index("ix_inbox_sightings_seen_at", inbox_sightings.c.seen_at)


# What the sending application says it sent; reports are matched to it by message id,
# else by (source, callback_data).
outbound = sa.Table(
    "outbound",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("source", CText, nullable=False),
    sa.Column("message_id", CText),
    sa.Column("callback_data", CText),
    # SHA-256 of callback_data: its unique key (4000 characters do not fit a btree entry)
    sa.Column("callback_hash", sa.LargeBinary),
    sa.Column("bulk_id", CText),
    sa.Column("to", CText),
    sa.Column("sent_at", Timestamp, nullable=False),
    sa.Column("registered_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("message_id IS NOT NULL OR callback_data IS NOT NULL", name="identified"),
)
sa.Index("uq_outbound_source_message_id", outbound.c.source, outbound.c.message_id, unique=True,
         postgresql_where=outbound.c.message_id.is_not(None))
sa.Index("uq_outbound_source_callback_hash", outbound.c.source, outbound.c.callback_hash,
         unique=True, postgresql_where=outbound.c.message_id.is_(None))
sa.Index("ix_outbound_sent_at", outbound.c.sent_at)


# Signed pushes already kept, by a key their scheme makes unique (a Standard Webhooks
# `webhook-id`, a Vonage `nonce`, a Twilio signature and body hash), until their window
# ends: a replay within it is answered 200 and not kept again. Written in the statement
# that keeps the body, so a key never outlives a body that was not kept.
push_replays = sa.Table(
    "push_replays",
    metadata,
    sa.Column("source", CText, primary_key=True),
    sa.Column("key", sa.LargeBinary, primary_key=True),  # SHA-256 of the scheme's key
    sa.Column("expires_at", Timestamp, nullable=False),
)
sa.Index("ix_push_replays_expires_at", push_replays.c.expires_at)
