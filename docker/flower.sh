#!/usr/bin/env bash
# The `flower` service (profile `monitoring`): Celery's web UI, never without a password.
set -o errexit -o nounset -o pipefail

if [ -z "${FLOWER_BASIC_AUTH:-}" ]; then
  echo "flower: set FLOWER_BASIC_AUTH=user:password in .env (see .env.example); refusing to run without it" >&2
  exit 1
fi
exec celery -A app.tasks.scheduler flower --address=0.0.0.0 --port=5555 \
  --basic-auth="$FLOWER_BASIC_AUTH"
