"""Settlement alerts: an area may judge the growth of its settlement layer like new construction
(``areas.settlement_alerts``); changes and alerts of source ``settlement``

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BEFORE = ("diff", "change_model")
AFTER = (*BEFORE, "settlement")


def _source_checks(allowed: tuple[str, ...]) -> None:
    for table in ("changes", "alerts"):
        op.drop_constraint(op.f(f"ck_{table}_source"), table, type_="check")
        op.create_check_constraint(op.f(f"ck_{table}_source"), table,
                                   f"source IN ({', '.join(repr(v) for v in allowed)})")


def upgrade() -> None:
    op.add_column("areas", sa.Column("settlement_alerts", sa.Boolean(), server_default=sa.text("false"),
                                     nullable=False))
    _source_checks(AFTER)


def downgrade() -> None:
    # the alerts stay (with their reviews), told apart from the diff's no longer
    op.execute("DELETE FROM changes WHERE source = 'settlement'")
    op.execute("UPDATE alerts SET source = 'diff' WHERE source = 'settlement'")
    _source_checks(BEFORE)
    op.drop_column("areas", "settlement_alerts")
