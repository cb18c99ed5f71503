"""Alembic environment: migrations run on the connection that `Database.upgrade` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from mailbot.store.schema import Base

config = context.config
connection = config.attributes.get("connection")

if connection is None:  # `alembic` command line (maintainers generating a revision): a URL in -x url=...
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///var/alembic-dev.db")
    connection = create_engine(url).connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
