"""Runs and tasks: hand a day to the workers (what `reminders run --enqueue` does), follow or
revoke the task, and see the workers (Celery's inspect/control, with a short timeout)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from celery.result import AsyncResult
from celery.states import PENDING, READY_STATES
from fastapi import APIRouter, Response
from pydantic import BaseModel, Field
from sqlalchemy import Engine, insert, select

from app.api import pages
from app.api.deps import AdminDep, CallerDep, EngineDep, visible_org
from app.api.problems import Problem, responses
from app.db.models import ApiRun, Organization
from app.domain.planning import utcnow
from app.errors import ReminderError
from app.services import runner
from app.services.api_keys import Caller

router = APIRouter(tags=["runs"])

#: Seconds a worker has to answer a ping (and then its inspect questions).
PING_TIMEOUT = 1.0


class RunIn(BaseModel):
    organization: str | None = Field(
        None, description="Its slug; omitted: the key's organization (every one, for an admin)"
    )
    date: dt.date | None = Field(None, description="Act as if today is this day (a preview)")
    dry_run: bool = Field(False, description="Plan in a rolled-back transaction: send nothing")


class RunOut(BaseModel):
    task_id: str | None = Field(description="The daily run's task (null for a dry run)")
    dry_run: bool
    planned: int | None = None
    would_send: list[dict[str, Any]] | None = None


class TaskOut(BaseModel):
    task_id: str
    organization: str | None
    date: dt.date | None
    state: str = Field(description="Celery's: PENDING (queued), STARTED, SUCCESS, FAILURE …")
    result: dict[str, Any] | None = Field(description="The run's own counts once it planned")
    counts: dict[str, int] = Field(description="The day's ledger rows per status, now")


class Revoked(BaseModel):
    task_id: str
    revoked: bool


class WorkerOut(BaseModel):
    name: str
    answered: bool
    active: list[dict[str, Any]]
    queues: list[str]


def _celery() -> Any:
    from app.tasks.scheduler import app

    return app


@router.post(
    "/runs",
    status_code=202,
    response_model=RunOut,
    summary="Hand the day to the workers (202 with the task id); dry_run previews it (200)",
    responses={200: {"model": RunOut, "description": "A dry run"}, **responses(401, 404, 422, 503)},
)
def start_run(body: RunIn, who: CallerDep, engine: EngineDep, response: Response) -> Any:
    slug = body.organization if body.organization is not None else who.org_slug
    with engine.connect() as conn:
        org_id = visible_org(conn, who, slug).id if slug is not None else None
    slugs = [slug] if slug is not None else []
    if body.dry_run:
        summary = runner.dry_run(engine, now=utcnow(), slugs=slugs, on_date=body.date)
        response.status_code = 200
        return {
            "task_id": None,
            "dry_run": True,
            "planned": summary.would_plan if summary.dry_run else summary.plan.planned,
            "would_send": summary.would_send,
        }
    from app.tasks.client import enqueue_day

    try:
        task_id = enqueue_day(on_date=body.date, org_slugs=slugs)
    except ReminderError as exc:
        raise Problem(503, str(exc)) from None
    with engine.begin() as conn:
        conn.execute(
            insert(ApiRun).values(
                task_id=task_id, org_id=org_id, local_date=body.date, created_at=utcnow()
            )
        )
    return {"task_id": task_id, "dry_run": False}


def _visible_run(engine: Engine, who: Caller, task_id: str) -> tuple[str | None, dt.date | None]:
    """The run's organization slug and date, if this caller may see it; 404 otherwise."""
    with engine.connect() as conn:
        row = conn.execute(
            select(ApiRun.org_id, Organization.slug, ApiRun.local_date)
            .outerjoin(Organization, Organization.id == ApiRun.org_id)
            .where(ApiRun.task_id == task_id)
        ).first()
    if row is None or (not who.admin and row.org_id != who.org_id):
        raise Problem(404, f"no task {task_id!r}")
    return row.slug, row.local_date


def _task(engine: Engine, task_id: str, slug: str | None, on: dt.date | None) -> dict[str, Any]:
    from app.tasks.client import day_counts

    result = AsyncResult(task_id, app=_celery())
    state = str(result.state)
    value = result.result if state == "SUCCESS" else None
    _busy, counts = day_counts(engine, on_date=on, org_slugs=[slug] if slug else [])
    return {
        "task_id": task_id,
        "organization": slug,
        "date": on,
        "state": state,
        "result": value if isinstance(value, dict) else None,
        "counts": counts,
    }


@router.get(
    "/tasks/{task_id}",
    response_model=TaskOut,
    summary="A run's state and counts",
    responses=responses(401, 404),
)
def read_task(task_id: str, who: CallerDep, engine: EngineDep) -> Any:
    slug, on = _visible_run(engine, who, task_id)
    return _task(engine, task_id, slug, on)


@router.delete(
    "/tasks/{task_id}",
    response_model=Revoked,
    summary="Revoke a run still queued (409 once a worker started it)",
    responses=responses(401, 404, 409),
)
def revoke_task(task_id: str, who: CallerDep, engine: EngineDep) -> Any:
    _visible_run(engine, who, task_id)
    app = _celery()
    if AsyncResult(task_id, app=app).state != PENDING:
        raise Problem(409, f"task {task_id}: already started or finished; it cannot be revoked")
    app.control.revoke(task_id)
    return {"task_id": task_id, "revoked": True}


@router.get(
    "/tasks",
    response_model=pages.Page[TaskOut],
    summary="Runs this key started that are not finished (queued or started)",
    responses=responses(401, 422),
)
def list_tasks(
    who: CallerDep, engine: EngineDep, cursor: pages.Cursor = None, limit: pages.Limit = 100
) -> Any:
    after = pages.decode_as(cursor, str)
    stmt = (
        select(ApiRun.task_id, Organization.slug, ApiRun.local_date)
        .outerjoin(Organization, Organization.id == ApiRun.org_id)
        .order_by(ApiRun.task_id)
    )
    if after is not None:
        stmt = stmt.where(ApiRun.task_id > after)
    if not who.admin:
        stmt = stmt.where(ApiRun.org_id == who.org_id)
    app = _celery()
    # Past result_expires a finished run's result is gone and Celery would call it PENDING:
    # runs that old are not active.
    stmt = stmt.where(ApiRun.created_at > utcnow() - app.conf.result_expires)
    found: list[dict[str, Any]] = []
    with engine.connect() as conn:
        runs = conn.execute(stmt).all()
    for task_id, slug, on in runs:
        if AsyncResult(task_id, app=app).state in READY_STATES:
            continue
        found.append(_task(engine, task_id, slug, on))
        if len(found) > limit:
            break
    return pages.page(found, limit, lambda t: t["task_id"])


@router.get(
    "/workers",
    response_model=list[WorkerOut],
    summary="Each worker that answered a ping: its active tasks and queues (admin key)",
    responses=responses(401, 403),
)
def list_workers(_admin: AdminDep) -> Any:
    control = _celery().control
    pongs = control.inspect(timeout=PING_TIMEOUT).ping() or {}
    names = sorted(pongs)
    if not names:
        return []
    ask = control.inspect(timeout=PING_TIMEOUT, destination=names, limit=len(names))
    active = ask.active() or {}
    queues = ask.active_queues() or {}
    return [
        {
            "name": name,
            "answered": True,
            "active": [
                {"id": t.get("id"), "name": t.get("name")} for t in active.get(name, []) or []
            ],
            "queues": [q.get("name") for q in queues.get(name, []) or []],
        }
        for name in names
    ]
