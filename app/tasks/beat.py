"""Beat's scheduler: in memory, and touching BEAT_HEARTBEAT_FILE on every tick.

No schedule file is needed: whether an organization's day already ran lives in the database
(``daily_runs``), not in beat's state, so a restarted beat, or two of them, start nothing twice,
and beat needs no writable directory. The tick file proves that beat's own loop is alive.
"""

from __future__ import annotations

from typing import Any

from celery.beat import Scheduler

from app.settings import get_settings
from app.tasks.runtime import touch


class HeartbeatScheduler(Scheduler):  # type: ignore[misc]
    def setup_schedule(self) -> None:
        super().setup_schedule()
        touch(get_settings().beat_heartbeat_file)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        touch(get_settings().beat_heartbeat_file)
        interval: float = super().tick(*args, **kwargs)
        return interval
