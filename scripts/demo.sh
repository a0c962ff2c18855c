#!/usr/bin/env bash
# The demo on the embedded default, from a fresh machine: SQLite file reminders.db in the current
# directory, console provider. Installs into .venv first.
set -o errexit -o nounset -o pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python3}
if [ ! -x "$root/.venv/bin/python" ]; then
  "$PYTHON" -m venv "$root/.venv"
fi
"$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/requirements.txt"
"$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$root"
exec "$root/.venv/bin/reminders" demo "$@"
