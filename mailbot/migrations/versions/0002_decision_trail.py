"""the decision trail on each inbound message

Revision ID: 0002_trail
Revises: 0001
Create Date: 2026-12-04 22:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_trail"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trail", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_column("trail")
