"""The numbered migrations as main had them before issue 16 split functions and views out
into sql/functions/ (tests/fixtures/sql_legacy/), to migrate a database the way that main did."""

from __future__ import annotations

from pathlib import Path

LEGACY_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "sql_legacy"


def legacy_sql_dir(target: Path, before: str | None = None) -> Path:
    """A folder of the legacy files under their own names (NNNN_*.sql), every one, or those
    whose name sorts before ``before``. migrate(conn, target) applies them as main did."""
    target.mkdir(parents=True)
    for path in sorted(LEGACY_DIR.glob("*.sql.legacy")):
        name = path.name.removesuffix(".legacy")
        if before is None or name < before:
            (target / name).write_bytes(path.read_bytes())
    return target
