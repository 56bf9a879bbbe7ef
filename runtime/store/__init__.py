"""Persistence: one interface, SQLite and PostgreSQL backends. All SQL lives in this package."""
