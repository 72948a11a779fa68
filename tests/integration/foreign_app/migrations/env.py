"""alembic environment of the foreign app: the database URL is the app's own DATABASE_URL from .env."""

from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)


def database_url() -> str:
    """DATABASE_URL from the .env beside alembic.ini (the release's link to shared/.env)."""
    env = Path(config.config_file_name).resolve().parent / ".env"
    for line in env.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "DATABASE_URL":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            return value.replace("postgresql://", "postgresql+psycopg://", 1)
    raise SystemExit(f"DATABASE_URL is not set in {env}")


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        # one transaction per migration: a failing revision leaves the ones before it applied,
        # as MySQL would anyway; the release's rollback has to undo them
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
