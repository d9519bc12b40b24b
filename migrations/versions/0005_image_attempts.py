"""Count the worker's attempts at an image, and the temporary error of the last one.

A worker counts an attempt before it reads an image and clears nothing after: the image leaves
``queued`` with a result or a rejection. An attempt that ends in a temporary error (a read error
of a network filesystem, memory exhausted, a decoder killed) records that error and the image is
tried again later; an attempt cut short by a crash records nothing. After
``PULMO_MAX_ATTEMPTS`` attempts the image is quarantined with the last temporary error, or as
``worker_crash`` when every attempt died with its worker.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("retry_reason", sa.String(32), nullable=True))
        batch.add_column(sa.Column("retry_detail", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("retry_detail")
        batch.drop_column("retry_reason")
        batch.drop_column("attempts")
