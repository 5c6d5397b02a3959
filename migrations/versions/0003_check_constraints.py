"""CHECK constraints for the names the code keeps in monitor.domain (statuses, kinds, providers, events)
and for an area's cadence (1 minute to 366 days)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# (table, column, allowed values), as they were when this revision was written.
ONE_OF = [
    ("models", "kind", ("segmenter", "classifier", "change")),
    ("scenes", "provider", ("stac", "sentinelsat", "local", "import")),
    ("scenes", "status", ("found", "prepared", "processed", "skipped", "offline", "failed")),
    ("runs", "status", ("running", "succeeded", "failed")),
    ("detections", "kind", ("built", "change")),
    ("changes", "source", ("diff", "change_model")),
    ("alerts", "status", ("new", "acknowledged", "confirmed", "dismissed", "resolved")),
    ("alerts", "confidence", ("probable", "confirmed")),
    ("alerts", "source", ("diff", "change_model")),
    ("parcel_changes", "verdict", ("permitted", "alert", "below_threshold")),
    ("subscriptions", "min_confidence", ("probable", "confirmed")),
    ("deliveries", "status", ("pending", "succeeded", "failed")),
    ("deliveries", "event", ("alert.created", "alert.updated", "alert.escalated", "alert.resolved")),
]
MIN_CADENCE, MAX_CADENCE = "interval '60 seconds'", "interval '31622400 seconds'"


def upgrade() -> None:
    for table, column, allowed in ONE_OF:
        condition = f"{column} IN ({', '.join(repr(v) for v in allowed)})"
        op.create_check_constraint(op.f(f"ck_{table}_{column}"), table, condition)
    op.create_check_constraint(op.f("ck_areas_providers"), "areas",
                               "providers <@ ARRAY['stac', 'sentinelsat', 'local']::text[]")
    # The scheduler used to raise shorter cadences to a minute and cap longer ones; now the database does.
    op.execute(f"UPDATE areas SET cadence = LEAST(GREATEST(cadence, {MIN_CADENCE}), {MAX_CADENCE})")
    op.create_check_constraint(op.f("ck_areas_cadence"), "areas", f"cadence BETWEEN {MIN_CADENCE} AND {MAX_CADENCE}")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_areas_cadence"), "areas", type_="check")
    op.drop_constraint(op.f("ck_areas_providers"), "areas", type_="check")
    for table, column, _allowed in reversed(ONE_OF):
        op.drop_constraint(op.f(f"ck_{table}_{column}"), table, type_="check")
