"""What routes share: the engine, the settings, the caller behind the key, its organization.

An organization's key sees only its organization: another one's resources answer 404 exactly
as a missing one does, so a key cannot even learn which slugs exist.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection, Engine

from app.api.problems import Problem
from app.db.models import Organization
from app.errors import NotFoundError
from app.services import orgs as org_service
from app.services.api_keys import Caller, authenticate
from app.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="An API key: `reminders api-key create`")
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


def settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Problem(401, "Authorization: a Bearer API key is needed", headers=_UNAUTHORIZED)
    with engine(request).connect() as conn:
        found = authenticate(conn, credentials.credentials)
    if found is None:
        raise Problem(401, "Authorization: unknown or revoked API key", headers=_UNAUTHORIZED)
    return found


def admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
    if not who.admin:
        raise Problem(403, "Authorization: this needs an admin key")
    return who


def visible_org(conn: Connection, who: Caller, slug: str) -> Organization:
    """The organization ``slug`` if this caller may see it; 404 otherwise."""
    if not who.admin and who.org_slug != slug:
        raise Problem(404, f"no organization {slug!r}")
    try:
        return org_service.get_org(conn, slug)
    except NotFoundError:
        raise Problem(404, f"no organization {slug!r}") from None


CallerDep = Annotated[Caller, Depends(caller)]
AdminDep = Annotated[Caller, Depends(admin)]
EngineDep = Annotated[Engine, Depends(engine)]
SettingsDep = Annotated[Settings, Depends(settings)]


def org_in_path(slug: str, who: CallerDep, eng: EngineDep) -> None:
    """Router-level: a path's organization is checked before its body is, so another
    organization's key gets 404 whatever it sent."""
    with eng.connect() as conn:
        visible_org(conn, who, slug)


OrgInPath = Depends(org_in_path)
