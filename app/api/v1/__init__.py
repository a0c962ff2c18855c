"""The v1 resources, each a router over the services the CLI uses."""

from __future__ import annotations

from fastapi import APIRouter

ROUTERS: list[APIRouter] = []
