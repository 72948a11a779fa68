"""v3, second half: fails, after 0003 was committed."""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE notes SET author = 'nobody'")
    op.execute("SELECT no_such_column FROM notes")


def downgrade() -> None:
    pass
