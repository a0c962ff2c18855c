#!/usr/bin/env bash
# The one-shot `migrate` service: bring the schema up to date and, with REMINDER_DEMO=1, load the
# demo organization (idempotent: safe on every `up`).
set -o errexit -o nounset -o pipefail

reminders db upgrade
if [ "${REMINDER_DEMO:-0}" = "1" ]; then
  reminders demo --load-only
fi
