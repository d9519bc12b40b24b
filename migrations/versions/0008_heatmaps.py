"""Heatmaps: where the model looked, for each flagged image.

``heatmaps`` holds one row per flagged prediction: the image, the prediction it explains, the
label it explains (the flagged disease with the highest probability) and the path of its 8-bit
grey PNG at the model's input size (``PULMO_HEATMAP_FOLDER``). The worker writes the row in
the same transaction as its prediction; an image without a row was not flagged, or its heatmap
failed (the prediction is kept either way). See docs/explain.md.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "heatmaps",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False, index=True),
        sa.Column(
            "prediction_id",
            sa.Integer,
            sa.ForeignKey("predictions.id"),
            nullable=False,
            unique=True,
        ),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("heatmaps")
