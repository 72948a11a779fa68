"""v4, second half: slow work, then a rewrite of every note; the operator presses Ctrl-C meanwhile.

Were this process left running after deployctl gave up, the rewrite would land after the rollback.
"""

import time

from alembic import op

revision = "0004s"
down_revision = "0003s"
branch_labels = None
depends_on = None


def upgrade() -> None:
    print("slow rewrite: started", flush=True)
    time.sleep(15)
    op.execute("UPDATE notes SET body = 'rewritten late'")


def downgrade() -> None:
    pass
