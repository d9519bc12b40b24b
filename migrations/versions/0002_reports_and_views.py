"""Nightly reports, the site's time zone, SQL views for health staff and a read-only role.

Views (documented in docs/staff-sql.md):
  screening_results  one row per received file with its latest result, on its local day
  flagged_patients   the flagged rows of screening_results: who must be called back
  daily_summary      one row per local day: received, screened, rejected, pending, flagged

A file belongs to the day on which it was received (images.created_at) in the site's time zone,
kept in ``site_settings`` (set from PULMO_SITE_TIMEZONE here and by every report run). On
PostgreSQL the conversion uses the named zone (daylight saving included); SQLite knows no named
zones, so there it uses the zone's UTC offset at the time it was last set.

On PostgreSQL the group role ``pulmo_reader`` (NOLOGIN; give staff login roles IN ROLE
pulmo_reader) may SELECT these views and nothing else. Roles belong to the whole cluster, so it is
created only when missing and never dropped here.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
VIEWS = ("daily_summary", "flagged_patients", "screening_results")  # drop order
READER = "pulmo_reader"

_PG_TZ = "(SELECT timezone FROM site_settings WHERE id = 1)"
_SQLITE_OFFSET = (
    "(SELECT printf('%+d minutes', utc_offset_minutes) FROM site_settings WHERE id = 1)"
)


def _sql_pieces(dialect: str) -> dict[str, str]:
    """The few expressions that differ between PostgreSQL and SQLite."""
    if dialect == "postgresql":
        return {
            "received_date": f"CAST(i.created_at AT TIME ZONE {_PG_TZ} AS DATE)",
            "received_local": f"(i.created_at AT TIME ZONE {_PG_TZ})",
            "threshold_pneumonia": "CAST(m.thresholds ->> 'pneumonia' AS DOUBLE PRECISION)",
            "threshold_tuberculosis": "CAST(m.thresholds ->> 'tuberculosis' AS DOUBLE PRECISION)",
        }
    return {
        "received_date": f"date(i.created_at, {_SQLITE_OFFSET})",
        "received_local": f"datetime(i.created_at, {_SQLITE_OFFSET})",
        "threshold_pneumonia": "json_extract(m.thresholds, '$.pneumonia')",
        "threshold_tuberculosis": "json_extract(m.thresholds, '$.tuberculosis')",
    }


SCREENING_RESULTS = """
CREATE VIEW screening_results AS
SELECT i.id AS image_id,
       {received_date} AS received_date,
       {received_local} AS received_local,
       i.created_at AS received_at,
       s.patient_id, s.accession, s.study_date, s.study_uid, i.sop_uid,
       i.status, i.reject_reason, i.reject_detail, i.source_path, i.stored_path,
       m.version AS model_version, m.trained AS model_trained,
       p.predicted_label, p.p_normal, p.p_pneumonia, p.p_tuberculosis,
       p.abnormality_score, p.flagged,
       {threshold_pneumonia} AS threshold_pneumonia,
       {threshold_tuberculosis} AS threshold_tuberculosis,
       p.created_at AS screened_at
FROM images i
LEFT JOIN studies s ON s.id = i.study_id
LEFT JOIN predictions p
       ON p.id = (SELECT max(p2.id) FROM predictions p2 WHERE p2.image_id = i.id)
LEFT JOIN models m ON m.id = p.model_id
"""

FLAGGED_PATIENTS = """
CREATE VIEW flagged_patients AS
SELECT received_date, received_local, patient_id, accession, study_date, predicted_label,
       p_tuberculosis, p_pneumonia, abnormality_score,
       threshold_tuberculosis, threshold_pneumonia, model_version,
       source_path, stored_path, study_uid, sop_uid, image_id
FROM screening_results
WHERE flagged
"""

_SCREENED = "SUM(CASE WHEN status = 'predicted' THEN 1 ELSE 0 END)"
_FLAGGED = "SUM(CASE WHEN flagged THEN 1 ELSE 0 END)"
DAILY_SUMMARY = f"""
CREATE VIEW daily_summary AS
SELECT received_date,
       COUNT(*) AS files_received,
       COUNT(DISTINCT study_uid) AS studies_received,
       {_SCREENED} AS screened,
       SUM(CASE WHEN status = 'rejected' THEN 1 ELSE 0 END) AS rejected,
       SUM(CASE WHEN status = 'queued' THEN 1 ELSE 0 END) AS pending,
       {_FLAGGED} AS flagged,
       ROUND(100.0 * {_FLAGGED} / NULLIF({_SCREENED}, 0), 1) AS flag_rate_pct
FROM screening_results
GROUP BY received_date
"""

COMMENTS = {
    "screening_results": "One row per received file (image) with its latest result; "
    "received_date is the local day in site_settings.timezone.",
    "flagged_patients": "Flagged images: patients a clinician must review. "
    "Order by abnormality_score DESC, p_tuberculosis DESC for urgency.",
    "daily_summary": "Per local day: files and studies received, screened, rejected, "
    "still pending, flagged, and the flag rate in percent of screened files.",
}

# Created only when missing (roles are cluster-wide); a migrating user without CREATEROLE gets
# a warning, and a DBA can create the role and grant the views later.
READER_ROLE = f"""
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READER}') THEN
    BEGIN
      CREATE ROLE {READER} NOLOGIN;
    EXCEPTION
      WHEN duplicate_object THEN NULL;
      WHEN insufficient_privilege THEN
        RAISE WARNING 'cannot create role {READER}: create it and grant SELECT on the views';
    END;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READER}') THEN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO {READER}', current_database());
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO {READER}', current_schema());
    GRANT SELECT ON screening_results, flagged_patients, daily_summary TO {READER};
  END IF;
END
$$;
"""


def _site_timezone() -> str:
    from pulmoscreen.config import get_settings

    return get_settings().site_timezone


def upgrade() -> None:
    op.create_index("ix_images_created_at", "images", ["created_at"])
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("report_date", sa.Date, nullable=False, unique=True),
        sa.Column("site_timezone", sa.String(64), nullable=False),
        sa.Column("generated_at", TS, nullable=False),
        sa.Column("duration_seconds", sa.Float, nullable=False),
        sa.Column("out_dir", sa.Text, nullable=False),
        sa.Column("html_path", sa.Text, nullable=False),
        sa.Column("pdf_path", sa.Text, nullable=False),
        sa.Column("csv_path", sa.Text, nullable=False),
        sa.Column("files_received", sa.Integer, nullable=False),
        sa.Column("studies_received", sa.Integer, nullable=False),
        sa.Column("screened", sa.Integer, nullable=False),
        sa.Column("rejected", sa.Integer, nullable=False),
        sa.Column("pending", sa.Integer, nullable=False),
        sa.Column("flagged", sa.Integer, nullable=False),
        sa.Column("model_versions", sa.JSON, nullable=False),
    )
    site = op.create_table(
        "site_settings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("utc_offset_minutes", sa.Integer, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    tz_name = _site_timezone()
    offset = datetime.now(ZoneInfo(tz_name)).utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    op.bulk_insert(
        site,
        [
            {
                "id": 1,
                "timezone": tz_name,
                "utc_offset_minutes": minutes,
                "updated_at": datetime.now(UTC),
            }
        ],
    )
    dialect = op.get_context().dialect.name
    pieces = _sql_pieces(dialect)
    op.execute(SCREENING_RESULTS.format(**pieces))
    op.execute(FLAGGED_PATIENTS)
    op.execute(DAILY_SUMMARY)
    if dialect == "postgresql":
        for view, comment in COMMENTS.items():
            op.execute(f"COMMENT ON VIEW {view} IS '{comment}'")
        op.execute(READER_ROLE)


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.drop_table("site_settings")
    op.drop_table("reports")
    op.drop_index("ix_images_created_at", table_name="images")
