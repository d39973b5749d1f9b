"""The schema stays ready to be distributed: what would be each table's distribution column
is in every unique key of that table (Citus requires it)."""

from __future__ import annotations

import sqlalchemy as sa

from service.tables import billing_rollup, message_history, messages

DISTRIBUTED = {messages: "message_id", message_history: "message_id", billing_rollup: "source"}


def unique_keys(table: sa.Table) -> list[tuple[str, set[str]]]:
    keys = [("primary key", {c.name for c in table.primary_key.columns})] \
        if table.primary_key.columns else []
    keys += [(index.name or "", {c.name for c in index.columns})
             for index in table.indexes if index.unique]
    return keys


def test_every_unique_key_holds_the_distribution_column() -> None:
    for table, column in DISTRIBUTED.items():
        keys = unique_keys(table)
        assert keys, table.name
        for name, columns in keys:
            assert column in columns, f"{table.name}.{name} lacks {column}"
        if table is not billing_rollup:  # the message's key is the pair
            assert all({"source", "message_id"} <= columns for _, columns in keys)
