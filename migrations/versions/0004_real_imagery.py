"""real imagery: areas' band order and resolution policy, scenes' pixel size, suspect scenes,
reverted alerts, subscriptions that default to confirmed alerts

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# (table, column, values before, values after), as they were when this revision was written.
WIDENED = [
    ("scenes", "status", ("found", "prepared", "processed", "skipped", "offline", "failed"),
     ("found", "prepared", "processed", "suspect", "skipped", "offline", "failed")),
    ("alerts", "status", ("new", "acknowledged", "confirmed", "dismissed", "resolved"),
     ("new", "acknowledged", "confirmed", "dismissed", "resolved", "reverted")),
    ("deliveries", "event", ("alert.created", "alert.updated", "alert.escalated", "alert.resolved"),
     ("alert.created", "alert.updated", "alert.escalated", "alert.resolved", "alert.reverted")),
]


def _check(table: str, column: str, allowed: tuple[str, ...]) -> None:
    op.drop_constraint(op.f(f"ck_{table}_{column}"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_{column}"), table,
                               f"{column} IN ({', '.join(repr(v) for v in allowed)})")


def upgrade() -> None:
    op.add_column("areas", sa.Column("band_order", postgresql.ARRAY(sa.Text()), nullable=True))
    op.add_column("areas", sa.Column("allow_resolution_mismatch", sa.Boolean(),
                                     server_default=sa.text("false"), nullable=False))
    op.add_column("scenes", sa.Column("pixel_m", sa.Float(), nullable=True))
    for table, column, _before, after in WIDENED:
        _check(table, column, after)
    op.alter_column("subscriptions", "min_confidence", server_default=sa.text("'confirmed'"))


def downgrade() -> None:
    op.alter_column("subscriptions", "min_confidence", server_default=sa.text("'probable'"))
    op.execute("UPDATE deliveries SET event = 'alert.resolved' WHERE event = 'alert.reverted'")
    op.execute("UPDATE alerts SET status = 'resolved' WHERE status = 'reverted'")
    op.execute("UPDATE scenes SET status = 'processed' WHERE status = 'suspect'")
    for table, column, before, _after in reversed(WIDENED):
        _check(table, column, before)
    op.drop_column("scenes", "pixel_m")
    op.drop_column("areas", "allow_resolution_mismatch")
    op.drop_column("areas", "band_order")
