"""``python -m app`` is the ``reminders`` command."""

import sys

from app.cli import main

sys.exit(main())
