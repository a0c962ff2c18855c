"""The one ASGI application: Twilio's callbacks, health, and the v1 resources."""

from __future__ import annotations

from fastapi import FastAPI

from app.api import health, metrics, problems, twilio
from app.api.limits import BodyLimits
from app.api.v1 import ROUTERS
from app.db.session import get_engine
from app.domain.planning import utcnow
from app.metrics import ledger as ledger_metrics
from app.settings import Settings, get_settings
from app.tasks.kick import EventsKick
from app.webhook.signatures import Signatures, check_webhook_settings

DESCRIPTION = """Feed the reminder service and read what it did.

Every `/v1` route needs `Authorization: Bearer KEY` (`reminders api-key create`). An
organization's key sees only its organization; an admin key manages organizations and may act
on every organization. Errors are `application/problem+json` (RFC 9457)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; refuses (ConfigError) when Twilio is used without what signatures need."""
    settings = settings or get_settings()
    check_webhook_settings(settings)
    app = FastAPI(
        title="Reminders API",
        version="1",
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = get_engine(settings.database_url)
    app.state.signatures = Signatures(settings)
    app.state.metrics = ledger_metrics.registry(app.state.engine, utcnow)
    problems.install(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(twilio.router)
    for router in ROUTERS:
        app.include_router(router, prefix="/v1")
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.api_max_body_bytes,
        timeout=settings.api_body_timeout_seconds,
    )
    return app


def create_served_app() -> FastAPI:
    """``reminders serve``'s app: the same, and a commit that wrote events (an inbound STOP,
    an opt-out through the API) wakes their delivery at once when there is a broker to ask."""
    settings = get_settings()
    app = create_app(settings)
    if settings.celery_broker_url or settings.redis_configured:
        EventsKick(_send_delivery_task, background=True).install()
    return app


def _send_delivery_task(countdown: float) -> None:
    from app.tasks.scheduler import app as celery

    celery.send_task("app.tasks.scheduler.deliver_events", countdown=countdown)
