"""Site calibrations: flag thresholds chosen on a site's own labelled sample, kept as data.

``site_calibrations`` holds every calibration applied with ``pulmoscreen calibrate --apply``:
the model version it is for, its thresholds, the rule and target that chose them, the sample's
size per label, the AUCs, the report's path, who applied it and when. At most one per model
version is active; a newer one supersedes it (``superseded_at``) and both stay.

``predictions.calibration_id`` names the calibration whose thresholds decided ``flagged``
(NULL: the model card's thresholds, or PULMO_THRESHOLDS').

The staff views gain the calibration: ``screening_results`` and ``flagged_patients`` show the
thresholds that were in force for each result (the calibration's where one decided it, else the
model's) and, as their last columns, ``calibration_id``, ``calibrated_at`` and
``calibrated_by``. The views are dropped and created again (SQLite cannot alter a table that a
view names), then commented and granted to ``pulmo_reader`` again on PostgreSQL.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_SCREENED_AT = "       p.created_at AS screened_at\n"
_CALIBRATION_COLUMNS = (
    "       p.created_at AS screened_at,\n"
    "       p.calibration_id, c.created_at AS calibrated_at, c.created_by AS calibrated_by\n"
)
_MODELS_JOIN = "LEFT JOIN models m ON m.id = p.model_id\n"
_CALIBRATIONS_JOIN = _MODELS_JOIN + "LEFT JOIN site_calibrations c ON c.id = p.calibration_id\n"
_FLAGGED_TAIL = "source_path, stored_path, study_uid, sop_uid, image_id\n"


def _migration(file_name: str) -> ModuleType:
    """An earlier migration's module (a migration file is not an importable module name)."""
    path = Path(__file__).with_name(file_name)
    spec = importlib.util.spec_from_file_location(f"pulmoscreen_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pieces(dialect: str, views: ModuleType) -> dict[str, str]:
    """0002's expressions, with SQLite's per-file offset of 0003."""
    pieces = views._sql_pieces(dialect)
    if dialect == "sqlite":
        offset = _migration("0003_site_utc_offsets.py")._SQLITE_OFFSET
        pieces["received_date"] = f"date(i.created_at, {offset})"
        pieces["received_local"] = f"datetime(i.created_at, {offset})"
    return pieces


def _calibrated(pieces: dict[str, str], dialect: str) -> dict[str, str]:
    """The thresholds in force: the calibration's where one decided the flag, else the model's."""
    found = dict(pieces)
    for disease in ("pneumonia", "tuberculosis"):
        if dialect == "postgresql":
            found[f"threshold_{disease}"] = (
                f"CAST(COALESCE(c.thresholds ->> '{disease}', m.thresholds ->> '{disease}') "
                "AS DOUBLE PRECISION)"
            )
        else:
            found[f"threshold_{disease}"] = (
                f"COALESCE(json_extract(c.thresholds, '$.{disease}'), "
                f"json_extract(m.thresholds, '$.{disease}'))"
            )
    return found


def _replace_once(sql: str, old: str, new: str) -> str:
    assert sql.count(old) == 1, f"0002's view no longer holds {old!r}"
    return sql.replace(old, new)


def _create_views(*, calibrated: bool) -> None:
    """Drop the staff views and create them again, with or without the calibration."""
    views = _migration("0002_reports_and_views.py")
    dialect = op.get_context().dialect.name
    pieces = _pieces(dialect, views)
    screening, flagged = views.SCREENING_RESULTS, views.FLAGGED_PATIENTS
    if calibrated:
        pieces = _calibrated(pieces, dialect)
        screening = _replace_once(screening, _SCREENED_AT, _CALIBRATION_COLUMNS)
        screening = _replace_once(screening, _MODELS_JOIN, _CALIBRATIONS_JOIN)
        flagged = _replace_once(
            flagged, _FLAGGED_TAIL, _FLAGGED_TAIL.rstrip("\n") + ",\n       calibration_id\n"
        )
    for view in views.VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute(screening.format(**pieces))
    op.execute(flagged)
    op.execute(views.DAILY_SUMMARY)
    if dialect == "postgresql":
        for view, comment in views.COMMENTS.items():
            op.execute(f"COMMENT ON VIEW {view} IS '{comment}'")
        op.execute(views.READER_ROLE)


def _drop_views() -> None:
    for view in _migration("0002_reports_and_views.py").VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")


def upgrade() -> None:
    op.create_table(
        "site_calibrations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_version", sa.String(128), nullable=False, index=True),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("thresholds", sa.JSON, nullable=False),
        sa.Column("target_sensitivity", sa.Float, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("sample_counts", sa.JSON, nullable=False),
        sa.Column("figures", sa.JSON, nullable=False),
        sa.Column("sample_source", sa.Text, nullable=False),
        sa.Column("report_path", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True),
    )
    _drop_views()
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("calibration_id", sa.Integer, nullable=True))
        batch.create_foreign_key(
            "fk_predictions_calibration_id", "site_calibrations", ["calibration_id"], ["id"]
        )
    _create_views(calibrated=True)


def downgrade() -> None:
    _drop_views()
    with op.batch_alter_table("predictions") as batch:
        batch.drop_constraint("fk_predictions_calibration_id", type_="foreignkey")
        batch.drop_column("calibration_id")
    _create_views(calibrated=False)
    op.drop_table("site_calibrations")
