"""PostgreSQL schema (versioned SQL migrations) and every query roomscribe runs (asyncpg, no ORM)."""
