"""The Alembic migrations of the schema; shipped inside the wheel as ``monitor._migrations``."""
