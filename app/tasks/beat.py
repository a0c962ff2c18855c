"""Beat's scheduler: in memory, and touching BEAT_HEARTBEAT_FILE on every tick.

No schedule file is needed: whether an organization's day already ran lives in the database
(``daily_runs``), not in beat's state, so a restarted beat, or two of them, start nothing twice,
and beat needs no writable directory. The tick file proves that beat's own loop is alive.
"""

from __future__ import annotations

from typing import Any

from celery.beat import Scheduler

from app.errors import ConfigError
from app.providers import check_provider_settings
from app.settings import get_settings
from app.tasks.runtime import touch


class HeartbeatScheduler(Scheduler):  # type: ignore[misc]
    def setup_schedule(self) -> None:
        # Beat refuses to start with the same provider settings the workers would refuse.
        from app.tasks.scheduler import refuse_to_start

        try:
            check_provider_settings(get_settings())
        except ConfigError as exc:
            refuse_to_start(exc)
        super().setup_schedule()
        touch(get_settings().beat_heartbeat_file)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        touch(get_settings().beat_heartbeat_file)
        interval: float = super().tick(*args, **kwargs)
        return interval
