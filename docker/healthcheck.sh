#!/usr/bin/env bash
# Container health checks that cost a stat() or one local HTTP request, never a broker round-trip.
#   healthcheck.sh worker     the worker's heartbeat file (WORKER_HEARTBEAT_FILE) is at most
#                             HEALTHCHECK_MAX_AGE seconds old (default 30; it is touched every ~2 s)
#   healthcheck.sh beat       beat's tick file (BEAT_HEARTBEAT_FILE) is at most three ticks old
#                             (3 x REMINDER_TICK_SECONDS + 10 s, REMINDER_TICK_SECONDS default 60)
#   healthcheck.sh http URL   URL answers 200
set -o errexit -o nounset -o pipefail

fresh() { # file max_age_seconds
  local file=$1 max_age=$2 modified now
  if ! modified=$(stat -c %Y "$file" 2>/dev/null); then
    echo "unhealthy: $file does not exist yet"
    exit 1
  fi
  now=$(date +%s)
  if [ $((now - modified)) -gt "$max_age" ]; then
    echo "unhealthy: $file is $((now - modified)) s old (allowed: $max_age s)"
    exit 1
  fi
  echo "healthy: $file is $((now - modified)) s old"
}

case "${1:-worker}" in
  worker)
    fresh "${WORKER_HEARTBEAT_FILE:?WORKER_HEARTBEAT_FILE is not set}" "${HEALTHCHECK_MAX_AGE:-30}"
    ;;
  beat)
    tick=${REMINDER_TICK_SECONDS:-60}
    fresh "${BEAT_HEARTBEAT_FILE:?BEAT_HEARTBEAT_FILE is not set}" \
      "${HEALTHCHECK_MAX_AGE:-$((3 * ${tick%.*} + 10))}"
    ;;
  http)
    python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' \
      "${2:?usage: healthcheck.sh http URL}"
    ;;
  *)
    echo "usage: healthcheck.sh worker|beat|http URL" >&2
    exit 2
    ;;
esac
