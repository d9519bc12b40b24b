"""Deliveries: the DICOM results (SR, and SC for a flagged image) sent back to the PACS.

``deliveries`` holds one row per result object that ``pulmoscreen send`` built into the outbox:
the image and prediction it reports, its kind (``sr`` or ``sc``), the file's path and
SOPInstanceUID, and where its sending stands. ``status`` is ``pending`` until a C-STORE
succeeds (``sent``, with ``sent_at``); ``failed`` marks a row that failed again and again, and
it is still retried. ``attempts``, ``last_error`` and ``next_attempt_at`` (capped exponential
backoff) record the failures. ``claimed_by`` and ``claimed_until`` let several senders share
the table without sending a row twice: a sender claims rows with one UPDATE, and a claim of a
sender that died lapses at ``claimed_until``. One row per prediction and kind.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False, index=True),
        sa.Column(
            "prediction_id", sa.Integer, sa.ForeignKey("predictions.id"), nullable=False
        ),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("sop_uid", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("prediction_id", "kind", name="uq_deliveries_prediction_kind"),
        sa.CheckConstraint("kind IN ('sr', 'sc')", name="ck_deliveries_kind"),
        sa.CheckConstraint(
            "status IN ('pending', 'sent', 'failed')", name="ck_deliveries_status"
        ),
    )


def downgrade() -> None:
    op.drop_table("deliveries")
