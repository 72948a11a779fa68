"""v4, first half: a backfill that deletes rows and commits (revision 0004s then takes its time)."""

from alembic import op

revision = "0003s"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM notes WHERE id % 2 = 0")


def downgrade() -> None:
    pass
