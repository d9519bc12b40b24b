"""Keep the content check's score of every image, accepted or not, so a site can audit it.

``images.content_score``: the larger of the check's two scores (distance of the image's
features to chest radiographs, and p(rotated by 90 degrees)), each divided by its threshold;
1.0 or more is refused as ``not_chest_content``. NULL when the served model's card has no
content check, and for images rejected before they were scored.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("content_score", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("content_score")
