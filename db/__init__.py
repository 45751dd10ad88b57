"""SQL assets: ordered migrations and named query files, shipped inside the package."""

from __future__ import annotations

from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent
MIGRATIONS_DIR = SQL_DIR / "migrations"
