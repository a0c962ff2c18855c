"""Every error answer is ``application/problem+json`` (RFC 9457) with a one-line ``detail``.

Service errors (``ReminderError``) map to 4xx here, once, so no route has its own try/except;
FastAPI's own 422 is replaced so a validation error names its field in one line too.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ConfigError, NotFoundError, ReminderError, ValidationError

log = logging.getLogger("app.api")

MEDIA_TYPE = "application/problem+json"


class ProblemModel(BaseModel):
    """RFC 9457 problem details (``errors`` lists every bad item of a bulk request)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


class Problem(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers


def problem_response(
    status: int,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": " ".join(detail.split()),
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each a problem document."""
    return {
        s: {
            "model": ProblemModel,
            "description": HTTPStatus(s).phrase,
            "content": {MEDIA_TYPE: {}},
        }
        for s in statuses
    }


def _field_of(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _validation_detail(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        item: dict[str, Any] = {"field": _field_of(loc), "reason": str(err.get("msg", "invalid"))}
        # A bulk item's position, as `items.3.expires_on` -> index 3.
        if len(loc) > 2 and loc[0] == "body" and loc[1] == "items" and isinstance(loc[2], int):
            item["index"] = loc[2]
        errors.append(item)
    first = errors[0] if errors else {"field": "body", "reason": "invalid"}
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{first['field']}: {first['reason']}{more}", errors


_OPTION = re.compile(r"(?<![\w-])--([a-z][a-z-]*)")


def as_field_names(message: str) -> str:
    """A service's message names CLI options (``--send-time``); over HTTP, the JSON field."""
    return _OPTION.sub(lambda m: m.group(1).replace("-", "_"), message)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, errors=exc.errors, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = _validation_detail(exc)
        return problem_response(422, detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        return problem_response(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(ReminderError)
    async def _service(_request: Request, exc: ReminderError) -> JSONResponse:
        if isinstance(exc, NotFoundError):
            return problem_response(404, str(exc))
        if isinstance(exc, ValidationError):
            return problem_response(422, as_field_names(str(exc)))
        if isinstance(exc, ConfigError):
            return problem_response(503, str(exc))
        return problem_response(409, str(exc))

    @app.exception_handler(DataError)
    async def _unstorable(_request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the checks let through (a NUL character): bad input.
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else "a value it cannot store"
        return problem_response(422, f"input: the database refused it ({first})")

    @app.exception_handler(UnicodeEncodeError)
    async def _unencodable(_request: Request, _exc: UnicodeEncodeError) -> JSONResponse:
        return problem_response(422, "input: text with a lone surrogate (not valid Unicode)")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(500, "internal error; see the service log")
