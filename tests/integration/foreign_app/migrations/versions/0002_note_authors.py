"""v2: notes get an author column, moved out of the "author: text" bodies v1 wrote."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("notes", sa.Column("author", sa.Text, nullable=True))
    op.execute(
        "UPDATE notes SET author = split_part(body, ': ', 1), body = substr(body, strpos(body, ': ') + 2)"
        " WHERE strpos(body, ': ') > 0"
    )


def downgrade() -> None:
    op.execute("UPDATE notes SET body = author || ': ' || body WHERE author IS NOT NULL")
    op.drop_column("notes", "author")
