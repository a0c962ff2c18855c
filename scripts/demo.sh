#!/usr/bin/env bash
# The demo on the embedded default, from a fresh machine: SQLite file reminders.db in the current
# directory, console provider. Installs into .venv first.
set -o errexit -o nounset -o pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python3}
# The interpreter is checked before pip runs: an old one is one line, not a wall of pip errors.
python="$PYTHON"
hint="set PYTHON=python3.11 or newer"
if [ -x "$root/.venv/bin/python" ]; then
  python="$root/.venv/bin/python"
  hint="remove $root/.venv, made with it, and set PYTHON=python3.11 or newer"
fi
if ! version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"; then
  echo "error: cannot run $python: the demo needs Python ≥ 3.11 ($hint)" >&2
  exit 1
fi
major="${version%%.*}"
minor="${version#*.}"
if [ "$major" -lt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -lt 11 ]; }; then
  echo "error: the demo needs Python ≥ 3.11; $python is Python $version ($hint)" >&2
  exit 1
fi
if [ ! -x "$root/.venv/bin/python" ]; then
  "$PYTHON" -m venv "$root/.venv"
fi
"$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/requirements.txt"
"$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$root"
exec "$root/.venv/bin/reminders" demo "$@"
