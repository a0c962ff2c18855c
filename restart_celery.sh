#!/usr/bin/env bash
# Restarts the Celery worker(s) and beat, waits until they report healthy, prints their last log
# lines. Run it from the project's directory (where docker-compose.yml and .env are).
set -o errexit -o nounset -o pipefail

services=(celery_worker celery_beat)

usage() {
  cat <<'EOF'
Usage: ./restart_celery.sh [--follow] [--timeout SECONDS] [--tail LINES] [-- COMPOSE_OPTIONS...]

Restarts celery_worker (every scaled copy) and celery_beat with `docker compose` or, when that is
missing, `docker-compose`. Each container gets SIGTERM and its stop_grace_period to finish the
texts it has claimed (warm shutdown) before it is stopped. Then the script waits until every
container reports healthy, prints their last log lines, and exits 0 - or exits 1, naming what is
not healthy, if that does not happen within the timeout.

Options:
  -f, --follow         after the restart, keep following both services' logs (Ctrl-C to stop)
  -t, --timeout SECS   how long to wait for healthy (default 180; beat reports on its first tick)
  -n, --tail LINES     how many log lines to print per container (default 20)
  -h, --help           show this help
  -- OPTIONS...        passed to compose before the subcommand, e.g. -- -p myproject --env-file x.env
                       (COMPOSE_PROJECT_NAME and COMPOSE_FILE in the environment work too)
EOF
}

follow=0
timeout=180
tail=20
compose_opts=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    -f | --follow) follow=1 ;;
    -t | --timeout) timeout=${2:?--timeout needs a number of seconds}; shift ;;
    -n | --tail) tail=${2:?--tail needs a number of lines}; shift ;;
    --) shift; compose_opts=("$@"); break ;;
    *) echo "restart_celery.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$timeout$tail" in
  *[!0-9]*) echo "restart_celery.sh: --timeout and --tail take whole numbers" >&2; exit 2 ;;
esac

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "restart_celery.sh: neither 'docker compose' nor 'docker-compose' is installed;" \
    "install one of them (see README, 'Run it with Docker')" >&2
  exit 1
fi
dc() { "${compose[@]}" ${compose_opts[@]+"${compose_opts[@]}"} "$@"; }

containers=$(dc ps -q "${services[@]}")
if [ -z "$containers" ]; then
  echo "restart_celery.sh: ${services[*]} are not running here; start them with: ${compose[*]} up -d" >&2
  exit 1
fi

echo "Restarting ${services[*]} (warm shutdown, this can take up to their stop_grace_period)..."
dc restart "${services[@]}"

echo "Waiting up to ${timeout}s for them to report healthy..."
deadline=$((SECONDS + timeout))
while :; do
  not_healthy=()
  for id in $(dc ps -q "${services[@]}"); do
    state=$(docker inspect --format '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")
    [ "${state##* }" = healthy ] || not_healthy+=("${state#/}")
  done
  [ ${#not_healthy[@]} -eq 0 ] && break
  if [ $SECONDS -ge $deadline ]; then
    echo "restart_celery.sh: not healthy after ${timeout}s: ${not_healthy[*]}" >&2
    dc logs --no-color --tail="$tail" "${services[@]}" >&2
    exit 1
  fi
  sleep 2
done

echo "Healthy: ${services[*]}. Last log lines:"
dc logs --no-color --tail="$tail" "${services[@]}"
if [ "$follow" = 1 ]; then
  exec "${compose[@]}" ${compose_opts[@]+"${compose_opts[@]}"} logs --follow --tail=0 "${services[@]}"
fi
