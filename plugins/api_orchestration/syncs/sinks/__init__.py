"""Where syncs write: SQL tables (SQLite, PostgreSQL) and files (ObjectStoragePath)."""
