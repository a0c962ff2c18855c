#!/usr/bin/env bash
# The one-shot `secrets` service, first in every `up`: makes the stack's passwords so a first
# start needs none by hand. Into the `secrets` volume (kept by `down`, gone with `down -v`):
#   postgres_password  PostgreSQL's (read as root when its container starts: docker-compose.yml)
#   redis.conf         Redis's generated config (requirepass), read as root on stdin at its start
#   redis_password     the app's REDIS_PASSWORD_FILE, and the Redis health check's
#   database_url       the app's DATABASE_URL_FILE
# Each password is generated once (secrets.token_urlsafe(32)) and kept; a POSTGRES_PASSWORD or
# REDIS_PASSWORD set in .env wins and is written on every start. PostgreSQL takes its password
# only when it creates its data volume: change it later with ALTER USER as well.
set -o errexit -o nounset -o pipefail

exec python - "${SECRETS_DIR:-/run/reminders-secrets}" <<'PY'
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import quote

APP_UID = 1000  # the app image's user

root = Path(sys.argv[1])


def write(name: str, text: str, uid: int) -> None:
    """Whole file or nothing (write, then rename), readable by its one reader only."""
    path = root / name
    tmp = path.with_name(f".{name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chown(tmp, uid, uid)
    tmp.chmod(0o600)
    tmp.replace(path)


def password(name: str, given: str) -> str:
    path = root / name
    if given:
        return given
    if path.is_file() and path.read_text(encoding="utf-8").strip():
        return path.read_text(encoding="utf-8").strip()
    return secrets.token_urlsafe(32)


def redis_quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


pg = password("postgres_password", os.environ.get("POSTGRES_PASSWORD", ""))
rd = password("redis_password", os.environ.get("REDIS_PASSWORD", ""))
user = os.environ.get("POSTGRES_USER") or "reminders"
db = os.environ.get("POSTGRES_DB") or "reminders"
write("postgres_password", pg, 0)
write("redis_password", rd, APP_UID)
write("redis.conf", f"requirepass {redis_quoted(rd)}\n", 0)
write(
    "database_url",
    f"postgresql://{quote(user, safe='')}:{quote(pg, safe='')}@postgres:5432/{quote(db, safe='')}",
    APP_UID,
)
print(f"secrets: ready in {root} (passwords not shown)")
PY
