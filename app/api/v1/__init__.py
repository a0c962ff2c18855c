"""The v1 resources, each a router over the services the CLI uses."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.v1 import events, ledger, orgs, runs, subscriptions, templates

ROUTERS: list[APIRouter] = [
    orgs.router,
    templates.router,
    subscriptions.router,
    ledger.router,
    runs.router,
    events.router,
]
