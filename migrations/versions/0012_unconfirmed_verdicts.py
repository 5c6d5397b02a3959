"""parcel verdicts for construction held back until a later date sees it again (MONITOR_ALERT_MIN_SIGHTINGS):
unconfirmed, and vanished when a later clear date no longer sees it

Revision ID: 0012
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0007"
branch_labels = None
depends_on = None

BEFORE = ("permitted", "alert", "below_threshold")
AFTER = ("permitted", "alert", "below_threshold", "unconfirmed", "vanished")


def _check(allowed: tuple[str, ...]) -> None:
    op.drop_constraint(op.f("ck_parcel_changes_verdict"), "parcel_changes", type_="check")
    op.create_check_constraint(op.f("ck_parcel_changes_verdict"), "parcel_changes",
                               f"verdict IN ({', '.join(repr(v) for v in allowed)})")


def upgrade() -> None:
    _check(AFTER)


def downgrade() -> None:
    op.execute("UPDATE parcel_changes SET verdict = 'below_threshold' WHERE verdict IN ('unconfirmed', 'vanished')")
    _check(BEFORE)
