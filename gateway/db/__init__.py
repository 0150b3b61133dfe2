"""Database layer: declarative base, engine/session management, Alembic migrations."""
