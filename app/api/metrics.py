"""``GET /metrics``: the ledger's gauges for Prometheus, no key (README: "Monitoring")."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.metrics import ledger as ledger_metrics

router = APIRouter(tags=["monitoring"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus gauges read from the ledger now (text exposition format)",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(request: Request) -> Response:
    reg = request.app.state.metrics
    return Response(ledger_metrics.exposition(reg), media_type=CONTENT_TYPE_LATEST)
