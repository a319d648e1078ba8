"""One way to print a listing: rows built once (dicts with stable snake_case keys), shown as a
rich table for people or as one JSON document for machines (`--output table|json`)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from rich.console import Console
from rich.table import Table

from core.model import jsonutil

OUTPUTS = ["table", "json"]

# Wide enough for any row: when the output is not a terminal, nobody's window sets the width,
# and a table folded to $COLUMNS would split the ids and GUIDs a script greps for.
NOT_A_TERMINAL_WIDTH = 100_000


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[dict[str, Any]], str]  # the row's value as the table shows it (rich markup allowed)
    right: bool = False  # numbers align right


def keyed(key: str, right: bool = False, header: str | None = None) -> Column:
    """A column that shows one key of the row as it is ("-" for none)."""
    return Column(header or key.replace("_", " "), lambda row: "-" if row[key] is None else str(row[key]), right)


def console(stderr: bool = False) -> Console:
    """A console for tables: today's look on a terminal; elsewhere never narrower than a row."""
    stream: TextIO = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else NOT_A_TERMINAL_WIDTH
    return Console(stderr=stderr, highlight=False, width=width)


def table(title: str, columns: list[Column], rows: list[dict[str, Any]]) -> Table:
    view = Table(title=title, title_justify="left")
    for column in columns:
        # fold, not an ellipsis: on a narrow terminal an id is still there whole, over two lines.
        view.add_column(column.header, justify="right" if column.right else "left", overflow="fold")
    for row in rows:
        view.add_row(*(column.cell(row) for column in columns))
    return view


def print_json(document: Any) -> None:
    """One JSON document on stdout, for a script or a SIEM to read."""
    sys.stdout.write(jsonutil.dumps(document).decode() + "\n")
    sys.stdout.flush()


def show(output: str, title: str, columns: list[Column], rows: list[dict[str, Any]], stderr: bool = False) -> None:
    """A listing as a table (on stdout, or stderr for a summary) or as a JSON list on stdout."""
    if output == "json":
        print_json(rows)
    else:
        console(stderr).print(table(title, columns, rows))
