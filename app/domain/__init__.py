"""Domain rules as plain Python: planning, templates, segments, phone numbers. No Celery, no I/O."""
