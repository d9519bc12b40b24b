"""Initial schema: studies, images, models, predictions.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("accession", sa.String(64)),
        sa.Column("study_date", sa.Date),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_studies_status", "studies", ["status"])
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sop_uid", sa.String(64), unique=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id")),
        sa.Column("source_path", sa.Text, nullable=False),
        sa.Column("stored_path", sa.Text),
        sa.Column("sha256", sa.String(64)),
        sa.Column("modality", sa.String(16)),
        sa.Column("body_part", sa.String(64)),
        sa.Column("view_position", sa.String(16)),
        sa.Column("transfer_syntax", sa.String(64)),
        sa.Column("rows", sa.Integer),
        sa.Column("cols", sa.Integer),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reject_reason", sa.String(32)),
        sa.Column("reject_detail", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_images_study_id", "images", ["study_id"])
    op.create_index("ix_images_sha256", "images", ["sha256"])
    op.create_index("ix_images_status", "images", ["status"])
    op.create_index("ix_images_reject_reason", "images", ["reject_reason"])
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.String(128), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("thresholds", sa.JSON, nullable=False),
        sa.Column("card", sa.JSON, nullable=False),
        sa.Column("trained", sa.Boolean, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
        sa.Column("p_normal", sa.Float, nullable=False),
        sa.Column("p_pneumonia", sa.Float, nullable=False),
        sa.Column("p_tuberculosis", sa.Float, nullable=False),
        sa.Column("predicted_label", sa.String(32), nullable=False),
        sa.Column("abnormality_score", sa.Integer, nullable=False),
        sa.Column("flagged", sa.Boolean, nullable=False),
        sa.Column("worker", sa.String(255)),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("image_id", "model_id", name="uq_predictions_image_model"),
    )
    op.create_index("ix_predictions_image_id", "predictions", ["image_id"])
    op.create_index("ix_predictions_flagged", "predictions", ["flagged"])


def downgrade() -> None:
    op.drop_table("predictions")
    op.drop_table("models")
    op.drop_table("images")
    op.drop_table("studies")
