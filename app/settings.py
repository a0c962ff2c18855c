"""One typed settings object, read from the environment once.

Nothing else in the application reads ``os.environ``: every knob is here, parsed and validated at
start-up, so a bad value stops the process with one line naming the variable instead of failing
at 3 a.m. in the middle of a send.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import time
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from app.domain.countries import check_country
from app.domain.planning import in_window
from app.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///reminders.db"


def parse_lead_days(raw: str) -> tuple[int, ...]:
    """``"5,3,1"`` -> ``(5, 3, 1)``: distinct, 0..365, largest first."""
    try:
        values = {int(part) for part in raw.split(",") if part.strip()}
    except ValueError:
        raise ValueError(
            f"expected comma-separated whole numbers like 5,3,1, got {raw!r}"
        ) from None
    if not values:
        raise ValueError("expected at least one lead day, like 5,3,1")
    if any(v < 0 or v > 365 for v in values):
        raise ValueError(f"lead days must be between 0 and 365, got {raw!r}")
    return tuple(sorted(values, reverse=True))


def parse_clock(raw: str) -> time:
    """``"09:00"`` -> ``time(9, 0)``."""
    hh, sep, mm = raw.strip().partition(":")
    if not sep or not hh.isdigit() or not mm.isdigit() or len(mm) != 2:
        raise ValueError(f"expected a time as HH:MM, got {raw!r}")
    try:
        return time(int(hh), int(mm))
    except ValueError:
        raise ValueError(f"expected a time as HH:MM, got {raw!r}") from None


def parse_window(raw: str) -> tuple[time, time]:
    """``"08:00-21:00"`` -> two times.

    A window may wrap past midnight (``22:00-02:00``); equal ends (``00:00-00:00``) mean all day.
    """
    start, sep, end = raw.partition("-")
    if not sep:
        raise ValueError(f"expected a window as HH:MM-HH:MM, got {raw!r}")
    first, last = parse_clock(start), parse_clock(end)
    return first, last


def _number(kind: type[int] | type[float], raw: str) -> float:
    try:
        return kind(raw.strip())
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"expected {what}, got {raw!r}") from None


def _int(raw: str) -> int:
    return int(_number(int, raw))


def _positive_int(raw: str) -> int:
    value = _int(raw)
    if value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {raw!r}")
    return value


def _non_negative_float(raw: str) -> float:
    value = _number(float, raw)
    if value < 0:
        raise ValueError(f"expected a number of at least 0, got {raw!r}")
    return value


def _positive_float(raw: str) -> float:
    value = _number(float, raw)
    if value <= 0:
        raise ValueError(f"expected a number above 0, got {raw!r}")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1 or 0 (true or false), got {raw!r}")


def _text(raw: str) -> str:
    return raw.strip()


def _optional_text(raw: str) -> str | None:
    return raw.strip() or None


def _http_url(raw: str) -> str:
    """An http(s) base URL, without a trailing slash: checked here, not at the first send."""
    value = raw.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"expected an http:// or https:// URL like https://example.com, got {raw!r}"
        )
    return value


def _port(raw: str) -> int:
    value = _int(raw)
    if not 1 <= value <= 65535:
        raise ValueError(f"expected a TCP port between 1 and 65535, got {raw!r}")
    return value


def _country(raw: str) -> str:
    return check_country(raw)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return value


def without_password(url: str) -> str:
    """The URL as it may be shown: a password in it becomes ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def _show(name: str, raw: str, *, secret: bool) -> str:
    if secret:
        return "(hidden)"
    return repr(without_password(raw)) if name == "DATABASE_URL" else repr(raw)


def _from_file(name: str, env: Mapping[str, str]) -> str | None:
    """``NAME_FILE=/path`` (the Docker secrets convention) when ``NAME`` itself is not set: the
    file's text, its final newline dropped. A plain ``NAME`` always wins."""
    path = (env.get(f"{name}_FILE") or "").strip()
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(f"{name}_FILE={path!r}: cannot read it ({reason})") from None


def _env(name: str, parse: Callable[[str], Any], default: Any, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": name, "parse": parse, "secret": secret})


# The schemes a DATABASE_URL may use: PostgreSQL through psycopg 3, and SQLite (the embedded
# default). Anything else would fail later, deep in SQLAlchemy, on a driver we do not ship.
DATABASE_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2", "sqlite")


def normalize_database_url(url: str) -> str:
    """Plain ``postgresql://`` (and Heroku's ``postgres://``) means psycopg 3 here."""
    url = url.strip()
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in DATABASE_SCHEMES:
        raise ValueError(
            f"unsupported database {scheme.lower() if sep else 'URL'}; use "
            "postgresql://user:password@host:5432/dbname or sqlite:///path/to/file.db"
        )
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.lower().startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str = _env("DATABASE_URL", normalize_database_url, DEFAULT_DATABASE_URL)
    sms_provider: str = _env("SMS_PROVIDER", _choice("console", "twilio"), "console")
    lead_days: tuple[int, ...] = _env("REMINDER_LEAD_DAYS", parse_lead_days, (5, 3, 1))
    send_time: time = _env("REMINDER_SEND_TIME", parse_clock, time(9, 0))
    send_window: tuple[time, time] = _env(
        "REMINDER_SEND_WINDOW", parse_window, (time(8, 0), time(21, 0))
    )
    # For an organization whose time zone names no one country and whose `org add` has no
    # --country; unset, such an organization needs --country.
    default_country: str | None = _env("REMINDER_DEFAULT_COUNTRY", _country, None)
    max_attempts: int = _env("SMS_MAX_ATTEMPTS", _positive_int, 5)
    retry_backoff_seconds: float = _env("SMS_RETRY_BACKOFF_SECONDS", _non_negative_float, 30.0)
    max_segments: int = _env("SMS_MAX_SEGMENTS", _positive_int, 3)
    # The most one template render may take, at send time and for each check at save; past it
    # the render fails with the reason (README: "Templates cannot hurt the service").
    template_render_budget_ms: float = _env("TEMPLATE_RENDER_BUDGET_MS", _positive_float, 50.0)
    # Sends in flight at once per process: the provider is slow, so throughput comes from overlap.
    send_concurrency: int = _env("SMS_CONCURRENCY", _positive_int, 32)
    # Message segments per second per sender (a 3-segment text takes 3); 1 is a US long code's
    # allowance, the safe default (README: "Sizing the rate").
    rate_per_second: float = _env("SMS_RATE_PER_SECOND", _positive_float, 1.0)
    send_batch_size: int = _env("SMS_BATCH_SIZE", _positive_int, 200)
    # Send batches one worker process works on at once (each its own senders' slots): a process
    # takes the next batch while earlier ones wait for slots and answers.
    open_batches: int = _env("SMS_OPEN_BATCHES", _positive_int, 8)
    tick_seconds: float = _env("REMINDER_TICK_SECONDS", _positive_float, 60.0)
    retention_days: int = _env("REMINDER_RETENTION_DAYS", _positive_int, 365)
    # A row claimed longer ago than this by a worker that never reported back is an unknown outcome.
    stale_sending_seconds: float = _env("REMINDER_STALE_SENDING_SECONDS", _positive_float, 900.0)
    # Reconciliation asks the provider for an uncertain text; not found this long after its
    # attempt (the provider's list can lag its accepts), it counts as not sent.
    reconcile_delay_seconds: float = _env(
        "REMINDER_RECONCILE_DELAY_SECONDS", _non_negative_float, 300.0
    )
    celery_broker_url: str | None = _env("CELERY_BROKER_URL", _optional_text, None, secret=True)
    redis_url: str | None = _env("REDIS_URL", _optional_text, None, secret=True)
    redis_host: str = _env("REDIS_HOST", _text, "127.0.0.1")
    redis_port: int = _env("REDIS_PORT", _positive_int, 6379)
    redis_db: int = _env("REDIS_DB", _int, 0)
    redis_password: str | None = _env("REDIS_PASSWORD", _optional_text, None, secret=True)
    twilio_account_sid: str | None = _env("TWILIO_ACCOUNT_SID", _optional_text, None)
    twilio_auth_token: str | None = _env("TWILIO_AUTH_TOKEN", _optional_text, None, secret=True)
    twilio_from_number: str | None = _env("TWILIO_FROM_NUMBER", _optional_text, None)
    twilio_messaging_service_sid: str | None = _env(
        "TWILIO_MESSAGING_SERVICE_SID", _optional_text, None
    )
    twilio_api_base_url: str = _env("TWILIO_API_BASE_URL", _http_url, "https://api.twilio.com")
    twilio_timeout_seconds: float = _env("TWILIO_TIMEOUT_SECONDS", _positive_float, 10.0)
    webhook_base_url: str | None = _env("WEBHOOK_BASE_URL", _http_url, None)
    console_output: str | None = _env("SMS_CONSOLE_OUTPUT", _optional_text, None)
    # Touched by the worker on each heartbeat and by beat on each tick; the container health
    # checks test their age instead of a broker round-trip.
    worker_heartbeat_file: str | None = _env("WORKER_HEARTBEAT_FILE", _optional_text, None)
    beat_heartbeat_file: str | None = _env("BEAT_HEARTBEAT_FILE", _optional_text, None)
    # The HTTP API (`reminders serve`): a client that declares a body and does not send it
    # within API_BODY_TIMEOUT_SECONDS gets 408; at most API_LIMIT_CONCURRENCY connections at once.
    api_max_body_bytes: int = _env("API_MAX_BODY_BYTES", _positive_int, 8 * 1024 * 1024)
    api_body_timeout_seconds: float = _env("API_BODY_TIMEOUT_SECONDS", _positive_float, 10.0)
    api_keep_alive_seconds: float = _env("API_KEEP_ALIVE_SECONDS", _positive_float, 5.0)
    api_limit_concurrency: int = _env("API_LIMIT_CONCURRENCY", _positive_int, 1000)
    # Each worker serves its own Prometheus counters on this port (all interfaces); unset: none.
    # Its pool processes write them to PROMETHEUS_MULTIPROC_DIR (emptied at start; unset: a
    # fresh temporary directory). README: "Monitoring".
    worker_metrics_port: int | None = _env("WORKER_METRICS_PORT", _port, None)
    prometheus_multiproc_dir: str | None = _env("PROMETHEUS_MULTIPROC_DIR", _optional_text, None)
    # Outbound events (README: "Events"): each delivery attempt waits this long for an answer;
    # a failed one is tried again after EVENTS_BACKOFF_SECONDS, doubling up to
    # EVENTS_BACKOFF_MAX_SECONDS (with jitter), until EVENTS_RETRY_SECONDS after it was first
    # due, then it is dead. Endpoints on loopback or private addresses are refused unless
    # EVENTS_ALLOW_PRIVATE=1.
    events_timeout_seconds: float = _env("EVENTS_TIMEOUT_SECONDS", _positive_float, 10.0)
    events_backoff_seconds: float = _env("EVENTS_BACKOFF_SECONDS", _positive_float, 10.0)
    events_backoff_max_seconds: float = _env("EVENTS_BACKOFF_MAX_SECONDS", _positive_float, 3600.0)
    events_retry_seconds: float = _env("EVENTS_RETRY_SECONDS", _positive_float, 86400.0)
    events_concurrency: int = _env("EVENTS_CONCURRENCY", _positive_int, 16)
    events_allow_private: bool = _env("EVENTS_ALLOW_PRIVATE", _bool, False)
    log_format: str = _env("LOG_FORMAT", _choice("text", "json"), "text")
    log_level: str = _env("LOG_LEVEL", _log_level, "INFO")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            raw = env.get(name)
            if raw is None or not raw.strip():
                raw = _from_file(name, env)
            if raw is None or not raw.strip():
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                shown = _show(name, raw, secret=f.metadata["secret"])
                reason = str(exc) if not f.metadata["secret"] else "invalid value"
                raise ConfigError(f"{name}={shown}: {reason}") from None
        settings = cls(**values)
        start, end = settings.send_window
        moment = settings.send_time
        if not in_window(moment, settings.send_window):
            raise ConfigError(
                f"REMINDER_SEND_TIME={moment:%H:%M} is outside REMINDER_SEND_WINDOW="
                f"{start:%H:%M}-{end:%H:%M}; choose a send time inside the window"
            )
        longest = settings.longest_send_seconds
        if settings.stale_sending_seconds <= longest:
            raise ConfigError(
                f"REMINDER_STALE_SENDING_SECONDS={settings.stale_sending_seconds:g} is not longer "
                f"than a send may take ({longest:g} s: "
                + (
                    f"TWILIO_TIMEOUT_SECONDS={settings.twilio_timeout_seconds:g} to read the "
                    "answer, up to 6 s to connect, and 3 s to claim and record it"
                    if settings.sms_provider == "twilio"
                    else "3 s to claim it and record its outcome"
                )
                + "): the sweeper would take texts still in flight for dead; "
                f"set it above {longest:g}"
            )
        return settings

    @property
    def longest_send_seconds(self) -> float:
        """The longest a live worker keeps a row in ``sending``: from its claim, just before the
        request (a second at most, fresh slots included if the claim came back late), through
        the provider's answer (its timeouts) to the outcome's write (2 s at most)."""
        record = 1.0 + 2.0
        if self.sms_provider == "twilio":
            return self.twilio_send_deadline + record
        return record

    @property
    def twilio_send_deadline(self) -> float:
        """The most a Twilio request may take: connecting (at most 5 s), then reading the
        answer (TWILIO_TIMEOUT_SECONDS), and a second's grace."""
        return min(5.0, self.twilio_timeout_seconds) + self.twilio_timeout_seconds + 1.0

    @property
    def broker_url(self) -> str:
        """``CELERY_BROKER_URL``, else ``REDIS_URL``, else built from the ``REDIS_*`` parts."""
        if self.celery_broker_url:
            return self.celery_broker_url
        return self.redis_connection_url

    @property
    def redis_configured(self) -> bool:
        """Whether this deployment has a Redis (set up explicitly, or the broker is Redis)."""
        default = Settings()
        broker = self.celery_broker_url or ""
        return bool(
            self.redis_url
            or self.redis_password
            or broker.startswith(("redis://", "rediss://"))
            or self.redis_host != default.redis_host
            or self.redis_port != default.redis_port
        )

    @property
    def redis_connection_url(self) -> str:
        """The Redis used for shared state (rate limits), whatever the broker is."""
        if self.redis_url:
            return self.redis_url
        auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings.from_env()
