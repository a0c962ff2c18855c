"""Database adapter: SQLAlchemy 2 on SQLite (embedded default) or PostgreSQL via psycopg 3."""
