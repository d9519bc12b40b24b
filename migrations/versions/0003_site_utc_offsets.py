"""SQLite views put each file on its local day with the offset in force when it arrived.

0002's SQLite views used one UTC offset, the zone's offset when it was last set, for every file:
across a daylight-saving change, files received within an hour of midnight landed on the wrong
day. ``site_utc_offsets`` tabulates the zone's offset changes (1970 to 2100), and the SQLite
views look each file's offset up there. PostgreSQL's views already convert with the named zone
and are unchanged; the table is kept on both so the report code need not care.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_SQLITE_OFFSET = (
    "(SELECT printf('%+d minutes', o.utc_offset_minutes) FROM site_utc_offsets o"
    " WHERE o.valid_from <= i.created_at ORDER BY o.valid_from DESC LIMIT 1)"
)


def _views_0002() -> ModuleType:
    """0002's view definitions (a migration file is not an importable module name)."""
    path = Path(__file__).with_name("0002_reports_and_views.py")
    spec = importlib.util.spec_from_file_location("pulmoscreen_migration_0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recreate_sqlite_views(offset: str | None) -> None:
    views = _views_0002()
    pieces = views._sql_pieces("sqlite")
    if offset is not None:
        pieces["received_date"] = f"date(i.created_at, {offset})"
        pieces["received_local"] = f"datetime(i.created_at, {offset})"
    for view in views.VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute(views.SCREENING_RESULTS.format(**pieces))
    op.execute(views.FLAGGED_PATIENTS)
    op.execute(views.DAILY_SUMMARY)


def upgrade() -> None:
    from pulmoscreen.db.reports import utc_offset_periods

    table = op.create_table(
        "site_utc_offsets",
        sa.Column("valid_from", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("utc_offset_minutes", sa.Integer, nullable=False),
    )
    tz_name = op.get_bind().scalar(sa.text("SELECT timezone FROM site_settings WHERE id = 1"))
    rows = utc_offset_periods(tz_name or "UTC")
    op.bulk_insert(table, [{"valid_from": f, "utc_offset_minutes": m} for f, m in rows])
    if op.get_context().dialect.name == "sqlite":
        _recreate_sqlite_views(_SQLITE_OFFSET)


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        _recreate_sqlite_views(None)
    op.drop_table("site_utc_offsets")
