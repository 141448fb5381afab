"""`python -m db migrate`: apply pending migrations to DATABASE_URL."""

from __future__ import annotations

import argparse
import asyncio
import logging

from common.logs import configure_logging
from common.settings import Settings
from db.migrate import migrate

logger = logging.getLogger("roomscribe.db")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m db")
    parser.add_argument("command", choices=["migrate"])
    parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    applied = asyncio.run(migrate(settings.database_url))
    logger.info("migrations up to date", extra={"applied": applied})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
