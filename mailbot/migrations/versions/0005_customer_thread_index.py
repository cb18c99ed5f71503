"""the customer's Outlook Thread-Index header block, kept on the ticket when it is opened (no read per reply)

Revision ID: 0005_customer_thread_index
Revises: 0004_claim_owner
Create Date: 2026-12-04 23:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_customer_thread_index"
down_revision = "0004_claim_owner"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Tickets opened before keep NULL: their replies read the block from the stored opening message.
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("customer_thread_index", sa.LargeBinary(length=22), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_column("customer_thread_index")
