#!/usr/bin/env bash
# Waits until PostgreSQL and Redis accept connections, then runs the command in place of this
# shell (exec), so the init in front of it delivers SIGTERM straight to Celery.
# Addresses come from the application's own settings (DATABASE_URL, CELERY_BROKER_URL, REDIS_*),
# so this never disagrees with the app about where its services are.
# WAIT_FOR names what to wait for (default "postgres redis"; empty: nothing) and
# WAIT_TIMEOUT_SECONDS (default 60) bounds the wait.
set -o errexit -o nounset -o pipefail

wait_for=${WAIT_FOR-postgres redis}
if [ -n "$wait_for" ]; then
  python - "${WAIT_TIMEOUT_SECONDS:-60}" "$wait_for" <<'PY'
import socket
import sys
import time
from urllib.parse import urlsplit

from app.errors import ConfigError
from app.settings import Settings

try:
    settings = Settings.from_env()
except ConfigError as exc:
    sys.exit(f"entrypoint: {exc}")

services = {
    "postgres": ("PostgreSQL", settings.database_url, 5432),
    "redis": ("Redis", settings.broker_url, 6379),
}
targets = []
for key in sys.argv[2].replace(",", " ").split():
    if key not in services:
        sys.exit(f"entrypoint: WAIT_FOR={sys.argv[2]!r}: expected postgres and/or redis")
    name, url, default_port = services[key]
    parts = urlsplit(url)
    if parts.hostname:  # sqlite and other file URLs have nothing to wait for
        targets.append((name, parts.hostname, parts.port or default_port))

deadline = time.monotonic() + float(sys.argv[1])
for name, host, port in targets:
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                sys.exit(
                    f"entrypoint: {name} at {host}:{port} is not reachable after {sys.argv[1]} s "
                    f"({exc}); is it running and is the address in the environment right?"
                )
            time.sleep(1)
    print(f"entrypoint: {name} at {host}:{port} is up", flush=True)
PY
fi

exec "$@"
