"""Scenes record the kind of their failure: transient (retried with backoff) or permanent.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("scenes", sa.Column("failure_kind", sa.String(16), nullable=True))
    op.create_check_constraint(op.f("ck_scenes_failure_kind"), "scenes",
                               "failure_kind IN ('transient', 'permanent')")
    # failures recorded before kinds existed were never retried: permanent
    op.execute("UPDATE scenes SET failure_kind = 'permanent' WHERE status = 'failed'")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_scenes_failure_kind"), "scenes", type_="check")
    op.drop_column("scenes", "failure_kind")
