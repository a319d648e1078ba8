"""`state copy`: an installation's SQLite state moved into an empty PostgreSQL database.

Every table the two backends share (`core.state.postgresql.TABLES`, the SQLite tables' names
and columns) is read from the SQLite file, brought to the current schema first, and written
into PostgreSQL in one transaction; then both sides are counted table by table. A copy
either lands whole or not at all: an interrupted one leaves the database empty, to run again.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.state import StateError
from core.state.sqlite import SQLiteStore


@dataclass(frozen=True)
class TableCopy:
    table: str
    sqlite_rows: int
    postgresql_rows: int

    @property
    def complete(self) -> bool:
        return self.sqlite_rows == self.postgresql_rows


def copy_sqlite_to_postgresql(path: Path, settings: Any) -> list[TableCopy]:
    """Copy the SQLite state at `path` into the (migrated, empty) database of `settings`; one
    `TableCopy` per table, the SQLite rows counted before and the PostgreSQL ones after. The
    rows stream from one to the other (an outbox of 100,000 alerts is never held in memory)."""
    from core.state import postgresql

    if not path.is_file():
        raise StateError(f"{path}: no such SQLite state file")
    SQLiteStore(path).close()  # brings an older file to the current schema, or refuses it clearly
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = postgresql.TABLES
        counted = {table: source.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in tables}
        postgresql.import_tables(settings, {table: source.execute(f"SELECT {', '.join(columns)} FROM {table}")
                                            for table, columns in tables.items()})
    finally:
        source.close()
    copied = postgresql.table_counts(settings)
    return [TableCopy(table, counted[table], copied.get(table, 0)) for table in tables]
