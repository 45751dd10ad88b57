"""Keyset cursors, one encoding for every paged read: URL-safe base64 of the JSON array
[kind, the last item's key, its id], made by page_cursor() in SQL (db/schema/items.sql). A cursor is
read back only by a read of its own kind, and only when its key has that read's type and its id is
an id: anything else is a 400, never a query."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from denorm.ids import MAX_ID
from services.api.errors import ApiError

K = TypeVar("K")


def decode(cursor: str, kind: str, key_of: Callable[[Any], K]) -> tuple[K, int]:
    """(key, id) of the item a page continues after; key_of turns the JSON key into the read's
    type, raising ValueError for one that is not."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_kind, value, last_id = orjson.loads(raw)
        if cursor_kind != kind or not isinstance(last_id, int) or isinstance(last_id, bool):
            raise ValueError("a cursor of another read")
        if not 0 < last_id <= MAX_ID:
            raise ValueError("not an id")
        return key_of(value), last_id
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise ApiError(400, "bad_cursor", "the cursor is not one this read gave out") from exc


def timestamp(value: Any) -> datetime:
    """A key that is a point in time (created_at, last_activity_at)."""
    if not isinstance(value, str):
        raise ValueError("not a timestamp")
    when = datetime.fromisoformat(value)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def count(value: Any) -> int:
    """A key that is a count (a chain project's upvotes, as of the fold)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise ValueError("not a count")
    return value


def newest_first(cursor: str | None, kind: str) -> tuple[datetime | str, int]:
    """Where a newest-first page by (timestamp, id) starts: after its cursor, or before everything."""
    return decode(cursor, kind, timestamp) if cursor is not None else ("infinity", MAX_ID)


def oldest_first(cursor: str | None, kind: str) -> tuple[datetime | str, int]:
    """Where an oldest-first page by (timestamp, id) starts: after its cursor, or at the start."""
    return decode(cursor, kind, timestamp) if cursor is not None else ("-infinity", 0)
