"""Count how often ingest has re-sent an image's task.

An image whose task keeps disappearing (a file that crashes every worker that decodes it) is
re-sent by ingest's sweep; the count says how often. Such a file is quarantined by the worker's
attempt count (``PULMO_MAX_ATTEMPTS``, migration 0005).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("resends", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("resends")
