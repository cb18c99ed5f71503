"""trust policy: a Message-ID proves nothing; the loop governor counts per address from an index

- ticket_messages.identity (unique) replaces the unique Message-ID as the dedupe guard; rows stored before it
  keep their Message-ID as their identity, so a redelivery of one of them is still seen as the same message;
- inbound_messages.collision records a Message-ID already used by a different message;
- outbox.recipient (the first recipient's address key) with an index on (recipient, created_at): the count of
  recent automatic mail to one address reads a few index entries instead of joining every ticket.

Revision ID: 0003_trust_policy
Revises: 0002_trail
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mailbot.addresses import key_of

revision = "0003_trust_policy"
down_revision = "0002_trail"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ticket_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("identity", sa.String(length=1100), nullable=True))
    op.execute("UPDATE ticket_messages SET identity = message_id")
    with op.batch_alter_table("ticket_messages", schema=None) as batch_op:
        batch_op.alter_column("identity", existing_type=sa.String(length=1100), nullable=False)
        batch_op.drop_constraint("uq_ticket_messages_message_id", type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_ticket_messages_identity"), ["identity"])
        batch_op.create_index(batch_op.f("ix_ticket_messages_message_id"), ["message_id"], unique=False)

    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("collision", sa.Text(), nullable=True))

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recipient", sa.String(length=320), nullable=True))
        batch_op.create_index("ix_outbox_recipient_created", ["recipient", "created_at"], unique=False)
    outbox = sa.table(
        "outbox",
        sa.column("id", sa.Integer),
        sa.column("recipients", sa.JSON),
        sa.column("recipient", sa.String),
    )
    connection = op.get_bind()
    for row_id, recipients in connection.execute(sa.select(outbox.c.id, outbox.c.recipients)).all():
        if recipients:
            connection.execute(
                outbox.update().where(outbox.c.id == row_id).values(recipient=key_of(recipients[0]))
            )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_recipient_created")
        batch_op.drop_column("recipient")
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_column("collision")
    with op.batch_alter_table("ticket_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ticket_messages_message_id"))
        batch_op.drop_constraint(batch_op.f("uq_ticket_messages_identity"), type_="unique")
        batch_op.create_unique_constraint("uq_ticket_messages_message_id", ["message_id"])
        batch_op.drop_column("identity")
