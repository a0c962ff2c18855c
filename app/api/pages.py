"""Lists come in pages, with an opaque cursor: the last item's key, base64-encoded JSON.

Keyset pagination (``WHERE key > last ORDER BY key``): a page costs the same however deep it
is, and rows added meanwhile neither repeat nor vanish from the pages still to come.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from app.api.problems import Problem

T = TypeVar("T")

MAX_LIMIT = 1000


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode(cursor: str | None) -> Any:
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        raise Problem(422, "cursor: not a cursor this API gave out") from None


def decode_as(cursor: str | None, kind: type) -> Any:
    value = decode(cursor)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise Problem(422, "cursor: not a cursor this API gave out")
    return value


def page(items: list[Any], limit: int, key: Any) -> dict[str, Any]:
    """``items`` was fetched with ``limit + 1``: the extra one says whether a next page exists."""
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next_cursor": encode(key(items[-1])) if more and items else None}


Cursor = Annotated[str | None, Query(description="From a previous page's `next_cursor`.")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")]
