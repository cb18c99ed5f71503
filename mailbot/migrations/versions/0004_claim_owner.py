"""the instance that claimed an inbound message (short, renewed leases: mailbot.leases)

Revision ID: 0004_claim_owner
Revises: 0003_trust_policy
Create Date: 2026-12-04 23:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_claim_owner"
down_revision = "0003_trust_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_column("claimed_by")
