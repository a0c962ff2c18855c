"""Celery configuration, built from the one settings object.

Every choice below serves one promise: a text is sent once. The ledger's conditional claim is
what guarantees it; this configuration keeps the broker from making that claim work harder than
it must (no long ETAs that Redis would redeliver, no batch running in two workers after a broker
blip) and keeps a dying worker from losing a message.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab
from kombu.entity import Exchange, Queue

from app.settings import Settings

#: Redis redelivers an unacknowledged message after this long. Every countdown we use and every
#: hard time limit stays well below it, so a message is only redelivered when its worker is gone.
VISIBILITY_TIMEOUT_SECONDS = 3600

#: The longest countdown a task may carry (a retry soon due). Longer waits live in the ledger's
#: ``next_attempt_at`` and the sweeper picks them up.
MAX_COUNTDOWN_SECONDS = 600

#: Per task (soft, hard) time limits in seconds. A send batch must finish well inside
#: REMINDER_STALE_SENDING_SECONDS (default 900), or the sweeper would take its rows for lost.
TIME_LIMITS = {
    "send": (600, 660),
    "daily": (900, 960),
    "sweep": (240, 300),
    "reconcile": (600, 660),
    "cleanup": (1800, 1900),
    "events": (30, 60),
}

#: Send batches wait in one queue; the beat tasks and daily runs in another, so a backlog of a
#: big day never delays another organization's start or the sweeper.
SEND_QUEUE = "reminders"
CONTROL_QUEUE = "reminders.control"
#: Outbound events go out from a queue of their own: a slow endpoint never delays a send batch
#: or beat's tasks.
EVENTS_QUEUE = "reminders.events"


def _queue(name: str) -> Any:
    """A direct queue named like its exchange and routing key (Celery's own default shape)."""
    return Queue(name, Exchange(name), routing_key=name)  # type: ignore[no-untyped-call]


def _is_redis(url: str) -> bool:
    return url.split(":", 1)[0] in ("redis", "rediss", "sentinel", "redis+socket")


def build(settings: Settings) -> dict[str, Any]:
    """The Celery settings (lower-case names) for this process's settings."""
    broker = settings.broker_url
    tick = settings.tick_seconds
    conf: dict[str, Any] = {
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-url
        "broker_url": broker,
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-connection-retry-on-startup
        "broker_connection_retry_on_startup": True,
        # The daily run's result carries its counts for `reminders run --enqueue --wait`; every
        # other task ignores its result (the ledger is the record). Results expire after a day.
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#result-backend
        "result_backend": settings.redis_connection_url,
        "task_ignore_result": True,
        "result_expires": timedelta(days=1),
        # JSON only: a task's arguments are ids and ISO dates, never pickled objects.
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-serializer
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Acknowledge after the task ran, and requeue when its process died, so a crash never
        # loses a batch; the ledger's claim makes the redelivery harmless.
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-acks-late
        "task_acks_late": True,
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-reject-on-worker-lost
        "task_reject_on_worker_lost": True,
        # One message per process at a time: a batch waits in the broker, not in a busy worker.
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-prefetch-multiplier
        "worker_prefetch_multiplier": 1,
        # After a broker connection loss the unacked batch is redelivered to someone else; stop
        # ours so one batch never runs in two workers at once.
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-cancel-long-running-tasks-on-connection-loss
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-time-limit
        "task_soft_time_limit": 300,
        "task_time_limit": 360,
        # Our own logging (app.logs, LOG_FORMAT) on stdout, set up by the setup_logging signal.
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-hijack-root-logger
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        # Task rate limits are not used (the per-sender limit lives in Redis): skip their cost.
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-disable-rate-limits
        "worker_disable_rate_limits": True,
        # https://docs.celeryq.dev/en/stable/userguide/routing.html#manual-routing
        "task_default_queue": SEND_QUEUE,
        "task_queues": [_queue(SEND_QUEUE), _queue(CONTROL_QUEUE), _queue(EVENTS_QUEUE)],
        "task_routes": {
            "app.tasks.scheduler.send_reminders": {"queue": SEND_QUEUE},
            "app.tasks.scheduler.deliver_events": {"queue": EVENTS_QUEUE},
            "app.tasks.scheduler.*": {"queue": CONTROL_QUEUE},
        },
        # Beat runs in UTC; each organization's local date is computed by the tasks.
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#timezone
        "timezone": "UTC",
        "enable_utc": True,
        # Touches BEAT_HEARTBEAT_FILE on every tick (see app.tasks.beat).
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#beat-scheduler
        "beat_scheduler": "app.tasks.beat:HeartbeatScheduler",
        "beat_max_loop_interval": max(1.0, min(tick, 30.0)),
        # https://docs.celeryq.dev/en/stable/userguide/periodic-tasks.html#entries
        "beat_schedule": {
            "dispatch-due": {
                "task": "app.tasks.scheduler.dispatch_due",
                "schedule": timedelta(seconds=tick),
                "options": {"expires": tick},
            },
            "sweep": {
                "task": "app.tasks.scheduler.sweep",
                "schedule": timedelta(seconds=tick),
                "options": {"expires": tick},
            },
            "reconcile": {
                "task": "app.tasks.scheduler.reconcile_unknown",
                "schedule": timedelta(seconds=max(tick, 60.0)),
                "options": {"expires": max(tick, 60.0)},
            },
            "deliver-events": {
                "task": "app.tasks.scheduler.deliver_events",
                "schedule": timedelta(seconds=tick),
                "options": {"expires": tick},
            },
            "cleanup": {
                "task": "app.tasks.scheduler.cleanup",
                "schedule": crontab(hour=3, minute=17),
                "options": {"expires": 3600},
            },
        },
    }
    if _is_redis(broker):
        # https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout
        conf["broker_transport_options"] = {
            "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
            "socket_keepalive": True,
            "health_check_interval": 30,
        }
    return conf
