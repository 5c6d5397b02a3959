"""parcel verdicts for construction held back until a later date sees it again (MONITOR_ALERT_MIN_SIGHTINGS):
unconfirmed, and vanished when a later clear date no longer sees it; a partial index finds the held ones

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BEFORE = ("permitted", "alert", "below_threshold")
AFTER = ("permitted", "alert", "below_threshold", "unconfirmed", "vanished")


def _check(allowed: tuple[str, ...]) -> None:
    op.drop_constraint(op.f("ck_parcel_changes_verdict"), "parcel_changes", type_="check")
    op.create_check_constraint(op.f("ck_parcel_changes_verdict"), "parcel_changes",
                               f"verdict IN ({', '.join(repr(v) for v in allowed)})")


HELD = sa.text("verdict = 'unconfirmed'")


def upgrade() -> None:
    _check(AFTER)
    op.create_index("ix_parcel_changes_unconfirmed", "parcel_changes", ["parcel_id"], postgresql_where=HELD)


def downgrade() -> None:
    op.drop_index("ix_parcel_changes_unconfirmed", table_name="parcel_changes", postgresql_where=HELD)
    op.execute("UPDATE parcel_changes SET verdict = 'below_threshold' WHERE verdict IN ('unconfirmed', 'vanished')")
    _check(BEFORE)
