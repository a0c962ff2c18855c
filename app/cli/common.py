"""What every command shares: settings, the engine, the clock, the provider, JSON output."""

from __future__ import annotations

import json
import sys
from datetime import date, datetime
from typing import Any

import click
from sqlalchemy import Engine

from app.db.session import get_engine
from app.domain.planning import utcnow
from app.logs import configure_logging
from app.providers import build_provider, check_provider_settings
from app.services.circuit_share import CircuitShare, LocalCircuitShare, RedisCircuitShare
from app.services.ratelimit import FallbackRateLimiter, LocalRateLimiter, RateLimiter
from app.services.sender import Sender
from app.settings import Settings, get_settings


def settings() -> Settings:
    return get_settings()


def engine() -> Engine:
    return get_engine(settings().database_url)


def now() -> datetime:
    return utcnow()


def make_sender() -> Sender:
    """A provider and sender for this process; refuses to start on missing provider settings."""
    s = settings()
    check_provider_settings(s)
    configure_logging(s, stream=sys.stderr)
    return Sender(
        engine=engine(),
        provider=build_provider(s),
        settings=s,
        limiter=_limiter(s),
        circuit_share=_circuit_share(s),
    )


def _limiter(s: Settings) -> RateLimiter:
    """Share the per-sender limit with the workers when there is a Redis to share it through."""
    if not s.redis_configured:
        return LocalRateLimiter()
    from app.services.ratelimit_redis import RedisRateLimiter

    return FallbackRateLimiter(
        RedisRateLimiter.from_url(s.redis_connection_url), LocalRateLimiter()
    )


def _circuit_share(s: Settings) -> CircuitShare:
    """The workers' circuit too, when there is a Redis: one probe at a time for all."""
    if not s.redis_configured:
        return LocalCircuitShare()
    return RedisCircuitShare(s.redis_connection_url)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def parse_date(_ctx: click.Context, param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2030-01-31") from None


def plural(n: int, word: str) -> str:
    """``plural(1, "customer")`` -> ``"1 customer"``; 2 -> ``"2 customers"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
