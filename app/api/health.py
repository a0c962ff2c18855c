"""Liveness (``/healthz``: the process answers) and readiness (``/readyz``: it can work)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from kombu.connection import Connection as BrokerConnection
from kombu.utils.url import maybe_sanitize_url
from pydantic import BaseModel
from sqlalchemy import text

from app.api.problems import problem_response, responses

router = APIRouter(tags=["health"])


class Ready(BaseModel):
    database: str
    broker: str


@router.get("/healthz", response_class=PlainTextResponse, summary="The process answers")
def healthz() -> str:
    return "ok"


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Database and broker reachable (503 naming which is not)",
    responses=responses(503),
)
def readyz(request: Request) -> JSONResponse:
    down = []
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any failure means not ready; the answer names it
        down.append("database")
    url = request.app.state.settings.broker_url
    try:
        with BrokerConnection(url, connect_timeout=2) as broker:  # type: ignore[no-untyped-call]
            broker.ensure_connection(max_retries=1, timeout=2)
    except Exception:  # noqa: BLE001
        down.append(f"broker ({maybe_sanitize_url(url)})")
    if down:
        return problem_response(503, f"not reachable: {', '.join(down)}")
    return JSONResponse({"database": "ok", "broker": "ok"})
