"""SQL assets shipped inside the package: the current-state schema by feature and by read model
(with the statements that use each), the ordered migrations, and the dataset generator."""

from __future__ import annotations

from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent
SCHEMA_DIR = SQL_DIR / "schema"
READMODELS_DIR = SQL_DIR / "readmodels"
MIGRATIONS_DIR = SQL_DIR / "migrations"
