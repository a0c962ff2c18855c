#!/usr/bin/env bash
# Waits until PostgreSQL and Redis accept connections, then runs the command in place of this
# shell (exec), so the init in front of it delivers SIGTERM straight to Celery.
# Addresses come from the application's own settings (DATABASE_URL, CELERY_BROKER_URL, REDIS_*),
# so this never disagrees with the app about where its services are.
# WAIT_TIMEOUT_SECONDS (default 60) bounds the wait; WAIT_FOR_SERVICES=0 skips it.
set -o errexit -o nounset -o pipefail

if [ "${WAIT_FOR_SERVICES:-1}" != "0" ]; then
  python - "${WAIT_TIMEOUT_SECONDS:-60}" <<'PY'
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

targets = []
for name, url, default_port in (
    ("PostgreSQL", settings.database_url, 5432),
    ("Redis", settings.broker_url, 6379),
):
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
