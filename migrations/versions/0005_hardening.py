"""Runs may end ``interrupted``: the process died (killed, stopped, lost the database) before the run
finished; the next pass over the area marks them so.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BEFORE = ("running", "succeeded", "failed")
AFTER = (*BEFORE, "interrupted")


def _status_check(allowed: tuple[str, ...]) -> None:
    op.drop_constraint(op.f("ck_runs_status"), "runs", type_="check")
    op.create_check_constraint(op.f("ck_runs_status"), "runs", f"status IN ({', '.join(repr(v) for v in allowed)})")


def upgrade() -> None:
    _status_check(AFTER)


def downgrade() -> None:
    op.execute("UPDATE runs SET status = 'failed' WHERE status = 'interrupted'")
    _status_check(BEFORE)
