#!/usr/bin/env bash
# The whole test run, from a fresh machine: install into .venv, lint, type-check, then pytest
# against the real PostgreSQL and Redis (each run makes its own database and Redis db number).
#   scripts/test.sh                 everything (includes the Docker end-to-end stage)
#   scripts/test.sh tests/domain    pytest arguments are passed through
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .

echo "== ruff"
.venv/bin/ruff check app tests bench
.venv/bin/ruff format --check app tests bench
echo "== mypy (strict, app/)"
.venv/bin/mypy
if [ $# -eq 0 ]; then
  echo "== container checks (hadolint, compose config, shellcheck)"
  PATH="$PWD/.venv/bin:$PATH" scripts/check_containers.sh
fi
echo "== pytest"
# Two xdist workers: the worker and container tests in one (see tests/conftest.py), the rest
# beside them. PYTEST_WORKERS=0 runs everything in this process.
exec .venv/bin/pytest -p no:cacheprovider -n "${PYTEST_WORKERS:-2}" --dist loadgroup "$@"
