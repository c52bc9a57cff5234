"""CSV rows as batch items: one row per article, columns named after the request's fields.

| column | field | example |
|---|---|---|
| topic | topic (required) | Heat pumps in old houses |
| keywords | keywords, separated by `;` | heat pump; insulation |
| audience, tone, language, length | the same fields | homeowners |
| sections | sections | 5 |
| words | target_words | 800 |
| images | images.count | 2 |
| style | images.style | watercolor |
| publish_target, publish_status, publish_at | publish.target, .status, .at | wordpress |

Headers are matched without regard to case or surrounding blanks; an empty cell leaves the field
to the batch's `defaults` (or the field's default). Values are validated as in a JSON batch:
an error names the item (`items.3.sections`) and the CSV line it came from.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from services.common.errors import InvalidRequest, Unprocessable

PLAIN = ("topic", "audience", "tone", "language", "length", "sections")
NESTED = {
    "words": ("target_words",),
    "images": ("images", "count"),
    "style": ("images", "style"),
    "publish_target": ("publish", "target"),
    "publish_status": ("publish", "status"),
    "publish_at": ("publish", "at"),
}
COLUMNS = (*PLAIN, "keywords", *NESTED)
# Whole numbers: converted here (the request's fields take no numbers as text); a cell that is
# not one is passed on as it is, for the field's own error.
NUMBERS = {"sections", "words", "images"}


def decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")  # Excel writes a byte order mark first
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"the CSV must be UTF-8 text; byte {exc.start} is not ({exc.reason})", param="file"
        ) from None


def rows(text: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The items the CSV holds and, for each, the line it starts on (for error messages)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise Unprocessable(
            "the CSV is empty: it needs a header row with `topic`", param="file"
        ) from None
    except csv.Error as exc:
        raise Unprocessable(f"the CSV header is not valid CSV ({exc})", param="file") from None
    names = [name.strip().lower() for name in header]
    unknown = [name for name in names if name and name not in COLUMNS]
    if unknown:
        raise Unprocessable(
            f"unknown CSV column {unknown[0]!r}; the columns are {', '.join(COLUMNS)}",
            param="file",
        )
    if "topic" not in names:
        raise Unprocessable("the CSV needs a `topic` column", param="file")
    if len(set(names) - {""}) != len([n for n in names if n]):
        raise Unprocessable("a CSV column is named twice", param="file")
    items, lines = [], []
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise Unprocessable(f"CSV line {line} is not valid CSV ({exc})", param="file") from None
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) > len(names):
            raise Unprocessable(
                f"CSV line {line} has {len(row)} cells but the header names {len(names)}",
                param="file",
            )
        items.append(_item(dict(zip(names, row, strict=False))))
        lines.append(line)
    return items, lines


def _item(cells: dict[str, str]) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for name, raw in cells.items():
        value: Any = raw.strip()
        if not name or not value:
            continue
        if name in NUMBERS and value.lstrip("-").isdigit():
            value = int(value)
        if name in PLAIN:
            item[name] = value
        elif name == "keywords":
            item["keywords"] = [word.strip() for word in value.split(";") if word.strip()]
        else:
            path = NESTED[name]
            if len(path) == 1:
                item[path[0]] = value
            else:
                item.setdefault(path[0], {})[path[1]] = value
    return item


def column_of(field: tuple[Any, ...]) -> str | None:
    """The CSV column an item field comes from (``("images", "count")`` -> `images`)."""
    if field[:1] and field[0] in (*PLAIN, "keywords"):
        return str(field[0])
    for name, path in NESTED.items():
        if tuple(field[: len(path)]) == path:
            return name
    return None
