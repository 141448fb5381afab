"""Apply the SQL files in db/migrations in order, each once, each in its own transaction.

Safe when several processes start at once: every migration transaction first takes one transaction-level
advisory lock, then checks `schema_migrations`, so a version is applied by exactly one of them and the
others see it as done.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

logger = logging.getLogger("roomscribe.db.migrate")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# An arbitrary constant shared by every roomscribe process: the key of the migration advisory lock.
_LOCK_KEY = 0x726F6F6D73637269  # "roomscri"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    path: Path

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def available_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files, ordered by version; a file name that does not match is an error."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file name must look like 0001_name.sql: {path.name}")
        found.append(Migration(version=path.stem, path=path))
    versions = [m.version.split("_", 1)[0] for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a version number: {versions}")
    return found


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; returns the versions this call applied (empty when up to date)."""
    migrations = available_migrations(directory)
    applied: list[str] = []
    connection = await asyncpg.connect(dsn)
    try:
        for migration in migrations:
            sql = migration.sql()  # small files, read before the transaction
            async with connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1::bigint)", _LOCK_KEY)
                await connection.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version text PRIMARY KEY,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = await connection.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)", migration.version
                )
                if done:
                    continue
                await connection.execute(sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)", migration.version
                )
            applied.append(migration.version)
            logger.info("migration applied", extra={"version": migration.version})
    finally:
        await connection.close()
    return applied
